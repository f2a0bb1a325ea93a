"""Several server processes sharing one database, and SIGTERM with live calls: the real entry point
(``python -m service.serve``) in processes of its own, the simulators in this one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from service.records.db import CallFilter, Database
from service.sim.caller import place_call
from service.sim.realtime_server import RealtimeSimulator
from service.sim.script import AfterAgentSilent, Say, load_clip
from service.sim.stack import (
    API_KEY,
    AUTH_TOKEN,
    DEFAULT_AGENTS_FILE,
    PUBLIC_BASE_URL,
    TOOLS_SECRET,
    free_port,
    inbound_call_form,
    post_voice_webhook,
    start_message,
    stream_signature,
)
from service.web.after_stream import APOLOGY
from service.web.app import BUSY

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
QUESTION = load_clip("caller_question")


@asynccontextmanager
async def server(env: Mapping[str, str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m service.serve`` with ``env`` (on top of the simulators' settings), until it accepts."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_", "PUBLIC_"))}
    full = {**clean, "PYTHONPATH": str(ROOT), "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "PUBLIC_BASE_URL": PUBLIC_BASE_URL, "AGENTS_FILE": str(DEFAULT_AGENTS_FILE),
            "TOOLS_SIGNING_SECRET": TOOLS_SECRET, **env}  # fmt: skip
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.serve", env=full, cwd=log.parent, stdout=out, stderr=out
        )
    try:
        for _ in range(400):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", int(env["PORT"]))
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()


async def stream(port: int, call_sid: str, params: Mapping[str, str]) -> ClientConnection:
    """A media stream opened as Twilio does, ``start`` sent."""
    headers = {"X-Twilio-Signature": stream_signature(AUTH_TOKEN, PUBLIC_BASE_URL)}
    ws = await connect(f"ws://127.0.0.1:{port}/twilio/media", additional_headers=headers)
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    await ws.send(start_message("MZ" + call_sid[2:], call_sid, params))
    return ws


async def close_code(ws: ClientConnection, timeout_s: float = 10.0) -> int | None:
    """Wait for the server to close ``ws``; its close code."""
    try:
        async with asyncio.timeout(timeout_s):
            async for _ in ws:
                pass
    except ConnectionClosed:
        pass
    return ws.close_code


def signed_post(port: int, path: str, form: Mapping[str, str]) -> str:
    """A form POST signed as Twilio signs it; the body of the answer."""
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_BASE_URL + path, dict(form))
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=urlencode(form).encode(),
        headers={"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return str(response.read().decode())


def webhook(port: int, call_sid: str) -> dict[str, str]:
    form = inbound_call_form(call_sid, to="+15551239999")
    return post_voice_webhook(f"http://127.0.0.1:{port}", AUTH_TOKEN, PUBLIC_BASE_URL, form)


async def test_two_processes_share_stream_tokens_and_decisions(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    async with RealtimeSimulator(api_key=API_KEY) as sim:
        port_a, port_b = free_port(), free_port()
        common = {"OPENAI_API_KEY": API_KEY, "DATABASE_URL": database}
        env_a = {**common, "OPENAI_REALTIME_URL": sim.url, "PORT": str(port_a)}
        # B cannot reach its model: its calls end with the apology, after 1.5 s of trying
        env_b = {**common, "OPENAI_REALTIME_URL": "ws://127.0.0.1:9/v1", "MODEL_RECONNECT_GIVE_UP_S": "1.5",
                 "PORT": str(port_b)}  # fmt: skip
        async with server(env_a, tmp_path / "a.log"), server(env_b, tmp_path / "b.log"):
            # a token used on A is refused on B
            first = "CA" + "1" * 32
            params = await asyncio.to_thread(webhook, port_a, first)
            on_a = await stream(port_a, first, params)
            for _ in range(200):  # A authorized it: its model session was configured
                if any(e["type"] == "session.update" for c in sim.connections for e in c.client_events):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the stream on A was not authorized")
            on_b = await stream(port_b, first, params)
            assert await close_code(on_b) == 1008
            assert on_a.close_code is None  # A's call goes on
            await on_a.close()
            # a decision made on B (the apology) is served by A
            second = "CA" + "2" * 32
            params = await asyncio.to_thread(webhook, port_b, second)
            assert await close_code(await stream(port_b, second, params)) == 1000
            form = {**inbound_call_form(second, to="+15551239999"), "CallStatus": "in-progress"}
            answer = await asyncio.to_thread(signed_post, port_a, "/twilio/action", form)
    assert f"<Say>{APOLOGY}</Say>" in answer


async def test_sigterm_lets_live_calls_finish_refuses_new_ones_and_records_them(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'records.db'}"
    async with RealtimeSimulator(api_key=API_KEY) as sim:
        port = free_port()
        env = {"OPENAI_REALTIME_URL": sim.url, "OPENAI_API_KEY": API_KEY, "PORT": str(port),
               "DATABASE_URL": database, "DRAIN_TIMEOUT_S": "30"}  # fmt: skip
        kwargs = {"auth_token": AUTH_TOKEN, "public_base_url": PUBLIC_BASE_URL, "to": "+15551239999"}
        async with server(env, tmp_path / "server.log") as proc:
            script = [Say(QUESTION, AfterAgentSilent(400))]
            base = f"http://127.0.0.1:{port}"
            live = [asyncio.create_task(place_call(base, script=script, speed=1.0, **kwargs)) for _ in "ab"]
            for _ in range(200):  # both calls are live: their sessions are configured
                events = [e for c in sim.connections for e in c.client_events]
                if sum(e["type"] == "session.update" for e in events) >= 2:
                    break
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            refused = await place_call(f"http://127.0.0.1:{port}", script=script, speed=4.0, **kwargs)
            records = await asyncio.gather(*live)
            code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0
    assert [r.end_reason for r in records] == ["caller_hangup", "caller_hangup"]  # finished, not cut
    assert all(r.agent_audio_ms > 1000 for r in records)
    assert BUSY in refused.twiml and "<Connect" not in refused.twiml
    db = Database(database, must_exist=True)
    saved = {doc["call_sid"] for doc in db.find_calls(CallFilter(), limit=10)}
    db.dispose()
    assert saved == {r.call_sid for r in records}
    log = (tmp_path / "server.log").read_text()
    assert "draining" in log and "Traceback" not in log


def scrape(port: int) -> dict[str, float]:
    """``GET /metrics`` (a new connection each time, so any worker may answer): sample -> value."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in samples}


async def test_with_two_workers_any_scrape_counts_the_calls_of_both(tmp_path: Path) -> None:
    calls = 6
    async with RealtimeSimulator(api_key=API_KEY) as sim:
        port = free_port()
        env = {"OPENAI_REALTIME_URL": sim.url, "OPENAI_API_KEY": API_KEY, "PORT": str(port), "WORKERS": "2",
               "DATABASE_URL": f"sqlite:///{tmp_path / 'records.db'}"}  # fmt: skip
        kwargs = {"auth_token": AUTH_TOKEN, "public_base_url": PUBLIC_BASE_URL, "to": "+15551239999"}
        async with server(env, tmp_path / "server.log"):
            base, script = f"http://127.0.0.1:{port}", [Say(QUESTION, AfterAgentSilent(400))]
            records = await asyncio.gather(
                *(place_call(base, script=script, speed=4.0, **kwargs) for _ in range(calls))
            )
            assert [r.end_reason for r in records] == ["caller_hangup"] * calls
            await asyncio.sleep(1.2)  # the live gauges are refreshed every 0.5 s
            scrapes = [await asyncio.to_thread(scrape, port) for _ in range(8)]
    log = (tmp_path / "server.log").read_text()
    assert len(set(re.findall(r"\(pid (\d+)\)", log))) == 2, "two workers served"
    for seen in scrapes:
        assert seen['dialtone_calls_total{end_reason="caller_hangup"}'] == calls
        assert seen["dialtone_active_calls"] == 0
        assert seen["dialtone_first_audio_seconds_count"] >= calls
