"""Replay of the committed call recordings: on the pure call logic (virtual time) and over real sockets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from service.replay import Recording, load, replay
from service.sim.replay_peers import ReplayRealtimeServer, ReplayToolServer, replay_over_sockets, service_env
from service.sim.stack import TOOLS_SECRET, LocalStack, agents_with_tools

CALLS = Path(__file__).resolve().parents[1] / "fixtures" / "calls"
RECORDINGS = sorted(CALLS.glob("*.jsonl.gz"))
NAMES = [p.name.split(".")[0] for p in RECORDINGS]


ACTING = {"tool_answered", "slow_tool_filler_barge_in", "tool_failed", "end_call", "transfer", "keypad",
          "preamble_barge_in"}  # fmt: skip


def sent_types(recording: Recording, peer: str) -> list[str]:
    key = "event" if peer == "twilio" else "type"
    return [json.loads(msg)[key] for p, msg in recording.outbound() if p == peer]


def sent(recording: Recording, kind: str) -> list[dict[str, Any]]:
    """The messages of type ``kind`` the call sent the model."""
    messages = [json.loads(msg) for p, msg in recording.outbound() if p == "realtime"]
    return [m for m in messages if m["type"] == kind]


def tool_lines(recording: Recording, direction: str) -> list[dict[str, Any]]:
    return [e.line for e in recording.entries if e.peer == "tool" and e.direction == direction]


def test_the_scenarios_are_committed() -> None:
    assert set(NAMES) >= {"greeting_two_turns", "barge_in", "hangup_mid_answer"}
    assert set(NAMES) >= {"drop_mid_answer", "drop_while_speaking", "rollover"}
    assert set(NAMES) >= ACTING


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


def test_the_tool_recordings_show_what_their_names_say() -> None:
    answered = load(CALLS / "tool_answered.jsonl.gz")
    (call,) = tool_lines(answered, "out")
    assert call["tool"] == "check_availability"
    assert call["arguments"] == {"date": "2026-12-24", "party_size": 4}
    (result,) = tool_lines(answered, "in")
    assert result["call_id"] == call["call_id"] and result["outcome"] == "ok"
    (output,) = sent(answered, "conversation.item.create")
    assert output["item"] == {"type": "function_call_output", "call_id": call["call_id"],
                              "output": result["output"]}  # fmt: skip
    assert "available" in json.loads(result["output"])
    assert answered.summary["tool_calls"] == 1 and answered.summary["tool_errors"] == 0

    slow = load(CALLS / "slow_tool_filler_barge_in.jsonl.gz")
    (result,) = tool_lines(slow, "in")
    assert result["outcome"] == "ok" and result["duration_ms"] >= 3000
    fillers = [m for m in sent(slow, "response.create") if "One moment" in str(m.get("response"))]
    assert len(fillers) == 1
    assert "clear" in sent_types(slow, "twilio") and slow.summary["barge_ins"] == 1
    assert slow.summary["truncations"] == 1

    failed = load(CALLS / "tool_failed.jsonl.gz")
    (result,) = tool_lines(failed, "in")
    assert result["outcome"] == "http_503" and "error" in json.loads(result["output"])
    assert failed.summary["tool_errors"] == 1 and sent(failed, "response.create")


def test_the_call_control_recordings_show_what_their_names_say() -> None:
    ended = load(CALLS / "end_call.jsonl.gz")
    assert ended.summary["end_reason"].startswith("agent ended the call")
    assert tool_lines(ended, "out") == []  # a built-in tool: nothing to POST
    transfer = load(CALLS / "transfer.jsonl.gz")
    assert transfer.summary["end_reason"] == "transferred to front_desk"
    for recording in (ended, transfer):  # the stream ends on the echo of the last words' mark
        last_in = [e for e in recording.entries if e.direction == "in"][-1]
        assert last_in.peer == "twilio" and json.loads(last_in.msg)["event"] == "mark"

    keypad = load(CALLS / "keypad.jsonl.gz")
    (told,) = sent(keypad, "conversation.item.create")
    assert told["item"]["content"] == [{"type": "input_text", "text": "The caller pressed 1 2 3 4 #"}]

    preamble = load(CALLS / "preamble_barge_in.jsonl.gz")
    (cut,) = sent(preamble, "conversation.item.truncate")
    (deleted,) = sent(preamble, "conversation.item.delete")
    assert cut["item_id"] != deleted["item_id"]  # the preamble is cut, the answer nobody heard deleted


def test_replay_notices_a_different_tool_result() -> None:
    """Tool results are inputs: another output from the tool is another function_call_output."""
    recording = load(CALLS / "tool_answered.jsonl.gz")
    entries = [
        dataclasses.replace(e, line={**e.line, "output": '{"available": []}'})
        if e.peer == "tool" and e.direction == "in" else e
        for e in recording.entries
    ]  # fmt: skip
    result = replay(dataclasses.replace(recording, entries=entries))
    assert not result.ok
    assert any("function_call_output" in m for m in result.mismatches)


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
async def test_replay_over_real_sockets_matches_the_recording(path: Path, tmp_path: Path) -> None:
    recording = load(path)
    peer = ReplayRealtimeServer()
    async with ReplayToolServer(TOOLS_SECRET) as tools:  # the agents' HTTP tools point at it
        agents = agents_with_tools(tools.base_url, tmp_path / "agents.toml")
        async with LocalStack(model_peer=peer, env=service_env(recording), agents_file=agents) as stack:
            result = await replay_over_sockets(
                recording, peer, http_base=stack.http_base, auth_token=stack.auth_token,
                public_base_url=stack.public_base_url, tools=tools,
            )  # fmt: skip
    assert result.ok, result.mismatches
    assert len(result.sent) == len(result.expected)
    assert tools.problems == []
