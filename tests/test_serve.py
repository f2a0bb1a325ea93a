"""``python -m service.serve`` refuses to start on bad configuration, listing every problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_serve(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_", "PUBLIC_", "AGENTS_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "service.serve"], env={**clean, **env, "PYTHONPATH": str(ROOT)},
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_missing_settings_are_all_listed(tmp_path: Path) -> None:
    result = run_serve({"PORT": "not-a-port"}, tmp_path)
    assert result.returncode == 2
    for name in ("OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL", "PORT"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_an_invalid_agents_file_stops_start_up_with_its_problems(tmp_path: Path) -> None:
    (tmp_path / "agents.toml").write_text(
        '[default]\nvoice = "nobody"\n[numbers."555"]\ninstructions = "x"\n'
    )
    env = {"OPENAI_API_KEY": "sk-test-0123456789", "TWILIO_AUTH_TOKEN": "token-0123456789",
           "PUBLIC_BASE_URL": "https://voice.example.com"}  # fmt: skip
    result = run_serve(env, tmp_path)
    assert result.returncode == 2
    assert "default.instructions" in result.stderr and "default.voice" in result.stderr
    assert 'numbers."555"' in result.stderr
    assert "sk-test-0123456789" not in result.stderr and "token-0123456789" not in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_production_server_runs_calls_and_stops_on_sigterm(tmp_path: Path, workers: int) -> None:
    """The real entry point (on uvloop where installed) in its own process(es): calls go through;
    SIGTERM stops it cleanly. With 2 workers, both share the port."""
    import asyncio
    import json
    import signal

    from service.sim.caller import place_call
    from service.sim.realtime_server import RealtimeSimulator
    from service.sim.script import AfterAgentSilent, HangUp, Say, load_clip
    from service.sim.stack import API_KEY, AUTH_TOKEN, DEFAULT_AGENTS_FILE, PUBLIC_BASE_URL, free_port

    async with RealtimeSimulator(api_key=API_KEY) as sim:
        port = free_port()
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_", "PUBLIC_"))}
        env = {**clean, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": API_KEY, "OPENAI_REALTIME_URL": sim.url,
               "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
               "AGENTS_FILE": str(DEFAULT_AGENTS_FILE), "PORT": str(port),
               "WORKERS": str(workers)}  # fmt: skip
        log = tmp_path / "server.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service.serve", env=env, cwd=tmp_path, stdout=out, stderr=out
            )
        try:
            for _ in range(200):
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                break
            calls = 2 * workers
            records = await asyncio.gather(*(
                place_call(
                    f"http://127.0.0.1:{port}", auth_token=AUTH_TOKEN, public_base_url=PUBLIC_BASE_URL,
                    to="+15551230002", speed=4.0,
                    script=[Say(load_clip("caller_question"), AfterAgentSilent(timeout_ms=300)),
                            HangUp(AfterAgentSilent(400))],
                )
                for _ in range(calls)
            ))  # fmt: skip
            for record in records:
                assert record.end_reason == "caller_hangup" and record.agent_audio_ms > 1000
            for conn in sim.connections:
                await asyncio.wait_for(conn.closed.wait(), 10)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 20)
    assert code == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    summaries = [entry["summary"] for entry in lines if entry.get("summary")]
    assert len(summaries) == calls and all(s["end_reason"] == "caller hung up" for s in summaries)
    assert not [entry for entry in lines if entry["level"] in ("ERROR", "CRITICAL")]
    if workers > 1:
        started = [entry for entry in lines if entry["msg"].startswith("Dialtone on port")]
        assert len({entry["msg"] for entry in started}) == workers  # one line per worker, each its pid
