"""Replay of the committed call recordings: on the pure call logic (virtual time) and over real sockets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from service.replay import Recording, load, replay
from service.sim.replay_peers import ReplayRealtimeServer, replay_over_sockets, service_env
from service.sim.stack import LocalStack

CALLS = Path(__file__).resolve().parents[1] / "fixtures" / "calls"
RECORDINGS = sorted(CALLS.glob("*.jsonl.gz"))
NAMES = [p.name.split(".")[0] for p in RECORDINGS]


def sent_types(recording: Recording, peer: str) -> list[str]:
    key = "event" if peer == "twilio" else "type"
    return [json.loads(msg)[key] for p, msg in recording.outbound() if p == peer]


def test_the_scenarios_are_committed() -> None:
    assert set(NAMES) >= {"greeting_two_turns", "barge_in", "hangup_mid_answer"}
    assert set(NAMES) >= {"drop_mid_answer", "drop_while_speaking", "rollover"}


@pytest.mark.parametrize("path", RECORDINGS, ids=NAMES)
def test_replay_on_the_call_logic_matches_the_recording(path: Path) -> None:
    result = replay(load(path))
    assert result.ok, result.mismatches
    assert len(result.sent) == len(result.expected) > 100


def test_the_recordings_show_what_their_names_say() -> None:
    greeting = load(CALLS / "greeting_two_turns.jsonl.gz")
    assert "response.create" in sent_types(greeting, "realtime")
    assert greeting.summary["responses"] == 3 and greeting.summary["barge_ins"] == 0
    barge = load(CALLS / "barge_in.jsonl.gz")
    assert "clear" in sent_types(barge, "twilio")
    assert "conversation.item.truncate" in sent_types(barge, "realtime")
    assert barge.summary["truncate_errors"] == 0
    hangup = load(CALLS / "hangup_mid_answer.jsonl.gz")
    assert hangup.summary["end_reason"] == "caller hung up"
    last_in = [
        json.loads(e.msg)["event"] for e in hangup.entries if e.peer == "twilio" and e.direction == "in"
    ]
    assert last_in[-1] == "stop"


def test_replay_notices_a_different_decision() -> None:
    """The golden is a real check: an echo lost from the recording changes the truncation point."""
    recording = load(CALLS / "barge_in.jsonl.gz")
    truncate_at = next(
        i
        for i, e in enumerate(recording.entries)
        if e.direction == "out" and "conversation.item.truncate" in e.msg
    )
    echoes = [
        i for i, e in enumerate(recording.entries[:truncate_at]) if e.direction == "in" and '"mark"' in e.msg
    ]
    entries = [e for i, e in enumerate(recording.entries) if i not in echoes[-3:]]
    result = replay(dataclasses.replace(recording, entries=entries))
    assert not result.ok
    assert any("conversation.item.truncate" in m for m in result.mismatches)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("path", RECORDINGS, ids=NAMES)
async def test_replay_over_real_sockets_matches_the_recording(path: Path) -> None:
    recording = load(path)
    peer = ReplayRealtimeServer()
    async with LocalStack(model_peer=peer, env=service_env(recording)) as stack:
        result = await replay_over_sockets(
            recording, peer, http_base=stack.http_base, auth_token=stack.auth_token,
            public_base_url=stack.public_base_url,
        )  # fmt: skip
    assert result.ok, result.mismatches
    assert len(result.sent) == len(result.expected)
