"""Outbound calls end to end over real sockets on 127.0.0.1: the service (its calls API, callbacks and
media stream), the Twilio REST simulator dialling a simulated callee (a person, an answering machine,
nobody), and the Realtime simulator. The twilio package really talks HTTP to the REST simulator."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service import outbound_cli
from service.records.cli import main as records_main
from service.sim.caller import CallRecord
from service.sim.realtime_server import SimConnection
from service.sim.script import AfterAgentSilent, Say, load_clip
from service.sim.stack import ACCOUNT_SID, AUTH_TOKEN, LocalStack
from service.sim.twilio_rest import Human, Machine, SimCall, TwilioRestSimulator, Unanswered

pytestmark = pytest.mark.timeout(120)

KEY = "test-dialtone-api-key-0123456789"
AGENT = "+15551230001"
PERSON, MACHINE, NOBODY = "+15557650001", "+15557650002", "+15557650003"
AGENTS = """
[default]
instructions = "You are the receptionist."
greeting = "Hello."

[numbers."+15551230001"]
instructions = "You call {{customer}} to confirm an appointment on {{day}}."
greeting = "Hi {{customer}}, this is Dialtone Dental about {{day}}."
voicemail_message = "Hi {{customer}}, Dialtone Dental here. Please call us back about {{day}}."
max_call_s = 120
"""
VALUES = {"customer": "Ada", "day": "Tuesday"}
GREETING = load_clip("caller_question")  # the answering machine's greeting: any speech will do


@dataclass
class Setup:
    stack: LocalStack
    twilio: TwilioRestSimulator

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.stack.http_base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {KEY}")
        request.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read())

    async def place(self, to: str, *, amd: bool = True) -> SimCall:
        body = {"to": to, "agent": AGENT, "params": VALUES, "amd": amd}
        status, answer = await asyncio.to_thread(self.request, "POST", "/calls", body)
        assert status == 201, answer
        return await self.twilio.wait_call(answer["call_sid"], 90)

    def env(self) -> dict[str, str]:
        assert self.stack.settings is not None
        return {
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_API_BASE_URL": self.twilio.url, "PUBLIC_BASE_URL": self.stack.public_base_url,
            "AGENTS_FILE": str(self.stack.agents_file), "DATABASE_URL": self.stack.database_url,
        }  # fmt: skip


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS, encoding="utf-8")
    callees = {
        PERSON: Human(script=(Say(load_clip("caller_question"), AfterAgentSilent(600)),)),
        MACHINE: Machine(greeting=GREETING),
        NOBODY: Unanswered("no-answer", ring_ms=500),
    }
    async with TwilioRestSimulator(
        account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, numbers=[AGENT], callees=callees, speed=4
    ) as twilio:
        env = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_API_BASE_URL": twilio.url, "DIALTONE_API_KEY": KEY}
        async with LocalStack(agents_file=agents, env=env) as stack:
            twilio.server_http_base = stack.http_base
            yield Setup(stack, twilio)


def clean(call: SimCall) -> CallRecord:
    """The call reached its stream and nothing was off on either side of Twilio."""
    assert call.errors == []
    record = call.record
    assert record is not None and record.protocol_errors == []
    return record


def joined(runs: list[tuple[float, float]], gap_ms: float = 40.0) -> list[tuple[float, float]]:
    """Heard runs with the small gaps of a loaded machine closed (playback that ran dry for a few ms while
    the next audio was on its way: the same utterance, not a second one)."""
    out: list[tuple[float, float]] = []
    for start, end in runs:
        if out and start - out[-1][1] <= gap_ms:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def session_updates(conn: SimConnection) -> list[dict[str, Any]]:
    return [e["session"] for e in conn.client_events if e["type"] == "session.update"]


async def test_a_person_answers_hears_their_name_and_the_call_goes_on(setup: Setup) -> None:
    call = await setup.place(PERSON)
    record = clean(call)
    assert call.statuses == ["initiated", "ringing", "in-progress", "completed"]
    assert call.amd == ["human"] and call.first("TimeLimit") == "120"
    assert record.end_reason == "caller_hangup" and record.action is not None
    assert record.parameters["direction"] == "outbound-api" and record.parameters["var_customer"] == "Ada"
    (conn,) = setup.stack.sim.connections
    await asyncio.wait_for(conn.closed.wait(), 10)
    assert conn.anomalies == []
    assert conn.session["instructions"] == "You call Ada to confirm an appointment on Tuesday."
    greeting, answer = conn.responses  # the greeting, then the answer to the callee's question
    assert "Hi Ada, this is Dialtone Dental about Tuesday." in str(greeting.instructions)
    assert answer.trigger == "vad" and answer.status == "completed"
    updates = session_updates(conn)
    assert [t["name"] for t in updates[0]["tools"]] == ["voicemail"]  # the first turns only...
    assert updates[-1] == {"type": "realtime", "tools": [], "tool_choice": "auto"}  # ...then withdrawn
    assert not any("{{" in json.dumps(e) for e in conn.client_events)
    assert record.says and record.heard_runs[-1][0] > record.says[0][0]  # answered after the question
    status, seen = await asyncio.to_thread(setup.request, "GET", f"/calls/{call.sid}")
    assert status == 200
    assert {k: seen[k] for k in ("status", "answered_by", "direction", "agent", "to", "from")} == {
        "status": "completed", "answered_by": "human", "direction": "outbound-api", "agent": AGENT,
        "to": PERSON, "from": AGENT,
    }  # fmt: skip


async def test_a_machine_gets_the_voicemail_after_the_beep_then_the_agent_hangs_up(setup: Setup) -> None:
    call = await setup.place(MACHINE)
    record = clean(call)
    machine = setup.twilio.callees[MACHINE]
    assert isinstance(machine, Machine)
    assert call.amd == ["machine_end_beep"]
    assert call.statuses == ["initiated", "ringing", "in-progress", "completed"]
    assert record.end_reason == "server_closed"  # the agent hung up...
    assert [v.name for v in record.action_verbs] == ["Hangup"]  # ...and the action answered <Hangup/>
    (conn,) = setup.stack.sim.connections
    await asyncio.wait_for(conn.closed.wait(), 10)
    assert conn.anomalies == []
    voicemail = [r for r in conn.responses if r.instructions and "You reached voicemail" in r.instructions]
    assert len(voicemail) == 1 and voicemail[0].status == "completed"
    message = "Hi Ada, Dialtone Dental here. Please call us back about Tuesday."
    assert message in str(voicemail[0].instructions)
    assert conn.responses[-1] is voicemail[0]  # the last thing the agent said
    # What the machine recorded after its beep is the voicemail message, whole, and nothing after it.
    after_beep = joined([(start, end) for start, end in record.heard_runs if end > machine.beep_end_ms])
    assert len(after_beep) == 1
    start, end = after_beep[0]
    assert start >= machine.beep_end_ms + machine.detected_after_beep_ms
    assert end - start >= voicemail[0].audio_ms - 40  # heard to its end (within one frame either side)
    assert record.duration_ms >= end


async def test_nobody_answers_the_status_says_so_and_the_call_is_recorded(setup: Setup) -> None:
    call = await setup.place(NOBODY, amd=False)
    assert call.statuses == ["initiated", "ringing", "no-answer"] and call.record is None
    status, seen = await asyncio.to_thread(setup.request, "GET", f"/calls/{call.sid}")
    assert (status, seen["status"], seen["answered_by"]) == (200, "no-answer", None)
    assert setup.stack.sim.connections == []
    shown = await _record_of(setup, call.sid)
    assert shown["direction"] == "outbound-api" and shown["end_reason"] == "not answered (no-answer)"
    assert (shown["agent"], shown["to"], shown["from"]) == (AGENT, NOBODY, AGENT)


async def _record_of(setup: Setup, sid: str) -> dict[str, Any]:
    """The call's record, once the records' writer thread has saved it (at most 10 s)."""
    async with asyncio.timeout(10):
        while True:
            out, err = io.StringIO(), io.StringIO()
            env = {"DATABASE_URL": setup.stack.database_url}
            code = await asyncio.to_thread(records_main, ["calls", "show", sid, "--json"], env, out, err)
            if code == 0:
                return dict(json.loads(out.getvalue()))
            await asyncio.sleep(0.1)


async def test_a_call_placed_from_the_command_line_runs_like_one_from_the_api(setup: Setup) -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = ["call", PERSON, "--agent", AGENT, "--param", "customer=Grace", "--param", "day=Friday"]
    code = await asyncio.to_thread(outbound_cli.main, argv, setup.env(), out, err)
    assert (code, err.getvalue()) == (0, ""), err.getvalue()
    sid = out.getvalue().split()[0]
    assert out.getvalue() == f"{sid} queued: {PERSON} from {AGENT}, agent {AGENT}\n"
    call = await setup.twilio.wait_call(sid, 90)
    record = clean(call)
    assert record.parameters["nonce"].startswith("cli.") and call.amd == []
    assert record.end_reason == "caller_hangup"
    (conn,) = setup.stack.sim.connections
    assert conn.session["instructions"] == "You call Grace to confirm an appointment on Friday."


async def test_a_machine_verdict_that_reaches_another_instance_still_gets_the_voicemail_left(
    tmp_path: Path,
) -> None:
    """Two instances behind a load balancer, one database: the call's stream is on the first, Twilio's
    answering-machine callback lands on the second, which hands it over through the database."""
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS, encoding="utf-8")
    shared = {"DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}"}
    async with TwilioRestSimulator(
        account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, numbers=[AGENT],
        callees={MACHINE: Machine(greeting=GREETING)}, speed=4,
    ) as twilio:  # fmt: skip
        env = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_API_BASE_URL": twilio.url, "DIALTONE_API_KEY": KEY}
        async with (
            LocalStack(agents_file=agents, env={**env, **shared}) as first,
            LocalStack(agents_file=agents, env={**env, **shared}) as second,
        ):
            twilio.server_http_base = first.http_base
            twilio.callback_http_bases["amd"] = second.http_base
            call = await Setup(first, twilio).place(MACHINE)
            record = clean(call)
            (amd,) = [c for c in call.callbacks if c.kind == "amd"]
            assert amd.status == 204 and second.sim.connections == []  # answered there, no call there
            assert [v.name for v in record.action_verbs] == ["Hangup"]
            (conn,) = first.sim.connections
            await asyncio.wait_for(conn.closed.wait(), 10)
            said = [r for r in conn.responses if r.instructions]
            voicemail = [r for r in said if "You reached voicemail" in str(r.instructions)]
            assert len(voicemail) == 1 and voicemail[0].status == "completed"
            assert conn.responses[-1] is voicemail[0]
