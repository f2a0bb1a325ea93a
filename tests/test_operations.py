"""Operations: admission (MAX_CALLS, the token budget, the drain), /readyz, /metrics, call records and
post-call webhooks, over real sockets (hypercorn + Dialtone, the simulators, SQLite)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hookkit import WebhookReceiver

from service.core.summary import END_KINDS, end_kind
from service.records.db import CallFilter, Database
from service.sim.caller import CallRecord, place_call
from service.sim.realtime_server import RealtimeSimulator
from service.sim.script import AfterAgentSilent, Say, load_clip
from service.sim.stack import API_KEY, TOOLS_SECRET, LocalStack
from service.sim.tools import verify_signature
from service.web.app import BUSY
from service.web.capacity import RESERVATION_S, Capacity

pytestmark = pytest.mark.timeout(90)

QUESTION = load_clip("caller_question")
SECRET = TOOLS_SECRET


async def call(stack: LocalStack, **kwargs: Any) -> CallRecord:
    kwargs.setdefault("speed", 4.0)
    return await place_call(stack.http_base, **stack.call_kwargs(to="+15551239999", **kwargs))


async def get(stack: LocalStack, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


# --- the pure parts -------------------------------------------------------------------------------------


def test_capacity_refuses_while_draining_then_when_tokens_are_low_then_when_full() -> None:
    capacity = Capacity(max_calls=2, min_tokens=1000)
    assert capacity.refusal(0.0) is None and capacity.has_room(live=1, now=0.0)
    capacity.reserve("CA1", 0.0)
    assert not capacity.has_room(live=1, now=1.0)  # one live, one reserved
    assert capacity.has_room(live=1, now=RESERVATION_S + 0.1)  # the reservation lapsed
    capacity.reserve("CA2", 20.0)
    capacity.started("CA2")  # its stream began: it is counted as live by the caller now
    assert capacity.count(live=0, now=21.0) == 0
    capacity.rate_limits(remaining=500, reset_s=6.0, now=30.0)
    assert capacity.refusal(31.0) == "rate_limited"
    assert capacity.refusal(36.1) is None  # the budget refilled
    capacity.rate_limits(remaining=50_000, reset_s=6.0, now=40.0)
    assert capacity.refusal(41.0) is None
    capacity.draining = True
    assert capacity.refusal(41.0) == "draining"


def test_unlimited_capacity_and_an_unknown_budget_never_refuse() -> None:
    capacity = Capacity(max_calls=0, min_tokens=0)
    capacity.rate_limits(remaining=0, reset_s=60, now=0.0)
    assert capacity.refusal(1.0) is None and capacity.has_room(live=10_000, now=1.0)


def test_end_reasons_fall_into_a_few_kinds() -> None:
    assert end_kind("caller hung up") == "caller_hangup"
    assert end_kind("agent ended the call (done)") == "agent_hangup"
    assert end_kind("transferred to front_desk") == "transfer"
    assert end_kind("model error insufficient_quota") == "model_failure"
    assert end_kind("model unreachable") == "model_failure"
    assert end_kind("stream rejected: stream token reused") == "rejected"
    assert end_kind("service shutting down") == "shutdown"
    assert end_kind("model socket lost while the call was ending", decided="agent_hangup") == "agent_hangup"
    assert end_kind("something new") == "other" and end_kind(None) == "other"
    assert {"caller_hangup", "agent_hangup", "transfer", "model_failure", "shutdown"} <= END_KINDS


# --- over sockets -------------------------------------------------------------------------------------


async def test_a_call_is_recorded_counted_in_the_metrics_and_priced(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    async with LocalStack(env={"DATABASE_URL": url}) as stack:
        record = await call(stack, script=[Say(QUESTION, AfterAgentSilent(400))])
        await asyncio.wait_for(stack.sim.connections[0].closed.wait(), 10)
        for _ in range(100):  # the bridge ends the call right after the caller's socket closes
            if not stack.service.ops.bridges:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.02)
        status, metrics = await get(stack, "/metrics")
    assert status == 200
    lines = metrics.splitlines()
    assert 'dialtone_calls_total{end_reason="caller_hangup"} 1.0' in lines
    assert "dialtone_active_calls 0.0" in lines
    assert "dialtone_first_audio_seconds_count 2.0" in lines  # the greeting and the answer
    cost_lines = [line for line in lines if line.startswith("dialtone_cost_usd_total{")]
    assert cost_lines and float(cost_lines[0].rsplit(" ", 1)[1]) > 0
    names = ("dialtone_barge_ins_total", "dialtone_truncate_errors_total", "dialtone_model_reconnects_total",
             "dialtone_event_loop_lag_seconds_count", "dialtone_calls_refused_total")  # fmt: skip
    for name in names:
        assert any(line.startswith(name) for line in lines), name
    # the record was written (the store flushes at the service's stop)
    db = Database(url, must_exist=True)
    doc = db.get_call(record.call_sid)
    db.dispose()
    assert doc is not None
    assert doc["call_sid"] == record.call_sid and doc["end_reason"] == "caller hung up"
    assert doc["direction"] == "inbound" and doc["to"] == "+15551239999"
    roles = [turn["role"] for turn in doc["transcript"]]
    assert roles.count("agent") == 2 and roles.count("caller") == 1
    assert doc["usage"]["input_tokens"] > 0 and doc["cost_usd"] is not None and doc["cost_usd"] > 0


async def test_readyz_says_ready_then_draining() -> None:
    async with LocalStack() as stack:
        assert await get(stack, "/readyz") == (200, '{"ready": true, "problems": []}')
        stack.service.ops.capacity.draining = True  # type: ignore[union-attr]
        status, body = await get(stack, "/readyz")
        refused = await call(stack, script=[Say(QUESTION, AfterAgentSilent(400))])
    assert status == 503 and json.loads(body) == {"ready": False, "problems": ["draining"]}
    assert refused.end_reason != "caller_hangup" and BUSY in refused.twiml  # no stream: a polite busy


async def test_max_calls_refuses_the_call_over_the_limit_politely_or_with_busy() -> None:
    for mode, expected in (("say", "<Say>"), ("reject", '<Reject reason="busy" />')):
        async with LocalStack(env={"MAX_CALLS": "1", "BUSY_RESPONSE": mode}) as stack:
            first = asyncio.create_task(call(stack, script=[Say(QUESTION, AfterAgentSilent(400))], speed=1.0))
            for _ in range(200):  # until the first call is live
                if stack.service.ops.bridges:  # type: ignore[union-attr]
                    break
                await asyncio.sleep(0.02)
            second = await call(stack, script=[Say(QUESTION, AfterAgentSilent(400))])
            status, body = await get(stack, "/readyz")
            await first
            status_after, _ = await get(stack, "/readyz")
        assert second.twiml and expected in second.twiml and "<Connect" not in second.twiml
        assert (status, json.loads(body)["problems"]) == (503, ["busy"])
        assert status_after == 200
        assert first.result().end_reason == "caller_hangup"


async def test_new_calls_are_refused_while_the_token_budget_is_low() -> None:
    sim = RealtimeSimulator(api_key=API_KEY, tokens_per_minute=6_000)
    async with LocalStack(sim=sim, env={"MIN_TOKENS_REMAINING": "6000"}) as stack:  # any spending: too low
        first = await call(stack, script=[Say(QUESTION, AfterAgentSilent(400))])
        second = await call(stack, script=[Say(QUESTION, AfterAgentSilent(400))])
        status, body = await get(stack, "/readyz")
    assert first.end_reason == "caller_hangup"
    assert "<Connect" not in second.twiml and BUSY in second.twiml
    assert status == 503 and json.loads(body)["problems"] == ["rate_limited"]


async def test_a_drain_lets_live_calls_finish_refuses_new_ones_and_records_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    stack = LocalStack(env={"DATABASE_URL": url})
    await stack.start()
    try:
        live = asyncio.create_task(call(stack, script=[Say(QUESTION, AfterAgentSilent(400))], speed=1.0))
        for _ in range(200):
            if stack.service.ops.bridges:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.02)
        stopping = asyncio.create_task(stack.stop(drain_timeout_s=30))
        await asyncio.sleep(0.1)
        refused = await call(stack, script=[Say(QUESTION, AfterAgentSilent(400))])
        record = await live
        await stopping
    finally:
        await stack.stop()
    assert record.end_reason == "caller_hangup"  # the live call went on to its natural end
    assert BUSY in refused.twiml and "<Connect" not in refused.twiml
    db = Database(url, must_exist=True)
    docs = db.find_calls(CallFilter(), limit=10)
    db.dispose()
    assert [d["call_sid"] for d in docs] == [record.call_sid]


async def test_calls_outliving_the_drain_are_ended_politely_and_recorded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    stack = LocalStack(env={"DATABASE_URL": url})
    await stack.start()
    try:
        script = [Say(QUESTION, AfterAgentSilent(400))]
        long_call = asyncio.create_task(
            call(stack, script=script, speed=1.0, end_silence_ms=60_000, end_timeout_ms=60_000)
        )
        for _ in range(200):
            if stack.service.ops.bridges:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.02)
        await stack.stop(drain_timeout_s=0.5)
        record = await long_call
    finally:
        await stack.stop()
    assert record.end_reason == "server_closed"
    assert [v.name for v in record.action_verbs] == ["Say", "Hangup"]
    assert "line has to close" in record.action_verbs[0].text
    db = Database(url, must_exist=True)
    doc = db.get_call(record.call_sid)
    db.dispose()
    assert doc is not None and doc["end_reason"] == "service shutting down"


async def test_the_post_call_webhook_gets_the_signed_record_and_is_retried(tmp_path: Path) -> None:
    async with (
        WebhookReceiver(statuses=[503]) as hook,  # fails once, then takes it
        LocalStack(env={"POST_CALL_WEBHOOK_URL": hook.url}) as stack,
    ):
        record = await call(stack, script=[Say(QUESTION, AfterAgentSilent(400))])
        await hook.wait_for(2)  # the retry comes after about a second
    received = hook.received
    assert len(received) == 2 and received[0][1] == received[1][1]  # the same record, twice
    headers, body = received[1]
    timestamp, signature = headers["X-Dialtone-Timestamp"], headers["X-Dialtone-Signature"]
    assert verify_signature(SECRET, timestamp, body, signature, float(timestamp))
    doc = json.loads(body)
    assert doc["call_sid"] == record.call_sid and doc["end_reason"] == "caller hung up"
    assert {"transcript", "usage", "cost_usd", "tool_calls", "timeline"} <= doc.keys()
