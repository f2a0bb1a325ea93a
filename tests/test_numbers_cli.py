"""``python -m service numbers …`` and ``python -m service call …`` against the Twilio REST simulator:
the numbers listed and pointed (dry run and for real), and every error one line, never a traceback."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service import outbound_cli
from service.sim.twilio_rest import TwilioRestSimulator, Unanswered

pytestmark = pytest.mark.timeout(60)

ACCOUNT = "AC" + "5" * 32
TOKEN = "numbers-cli-auth-token"
PUBLIC = "https://voice.example.test"
AGENTS = """
[default]
instructions = "You are the receptionist."

[numbers."+15551230001"]
instructions = "You call {{customer}}."
"""


@pytest.fixture
async def sim() -> AsyncIterator[TwilioRestSimulator]:
    twilio = TwilioRestSimulator(
        account_sid=ACCOUNT, auth_token=TOKEN, numbers=["+15551230001", "+15551230002"],
        callees={"+15557650001": Unanswered("busy", ring_ms=60_000)},
    )  # fmt: skip
    await twilio.start()
    yield twilio
    await twilio.stop()


@pytest.fixture
def env(tmp_path: Path, sim: TwilioRestSimulator) -> dict[str, str]:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS, encoding="utf-8")
    return {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN, "TWILIO_API_BASE_URL": sim.url,
            "PUBLIC_BASE_URL": PUBLIC, "AGENTS_FILE": str(agents)}  # fmt: skip


async def run(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(outbound_cli.main, list(argv), env, out, err)
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code, out.getvalue(), err.getvalue()


async def test_numbers_are_listed_with_where_their_calls_go(
    env: dict[str, str], sim: TwilioRestSimulator
) -> None:
    number = sim.number("+15551230002")
    assert number is not None
    number.fields["voice_url"] = "https://elsewhere.example.com/voice"
    code, out, err = await run(env, "numbers", "list")
    assert (code, err) == (0, "")
    first, second = out.splitlines()
    assert first.startswith("+15551230001") and "not set" in first and "agent +15551230001" in first
    assert (
        "elsewhere" in second
        and "agent default" in second
        and "https://elsewhere.example.com/voice" in second
    )


async def test_a_dry_run_prints_the_change_and_makes_none(
    env: dict[str, str], sim: TwilioRestSimulator
) -> None:
    code, out, err = await run(env, "numbers", "point", "+15551230001", "--dry-run")
    assert (code, err) == (0, "")
    number = sim.number("+15551230001")
    assert number is not None and number.fields["voice_url"] is None  # untouched
    assert out.splitlines() == [
        f"+15551230001 ({number.sid}):",
        f"  voice_url              (none)  ->  {PUBLIC}/twilio/voice",
        "  voice_method           POST",
        f"  voice_fallback_url     (none)  ->  {PUBLIC}/twilio/fallback",
        "  voice_fallback_method  POST",
        f"  status_callback        (none)  ->  {PUBLIC}/twilio/status",
        "  status_callback_method POST",
        "dry run: 3 setting(s) would change; nothing was changed",
    ]
    assert not any(method == "POST" for method, _, _ in sim.requests)


async def test_pointing_a_number_sets_its_urls_and_a_second_time_changes_nothing(
    env: dict[str, str], sim: TwilioRestSimulator
) -> None:
    code, out, _ = await run(env, "numbers", "point", "+15551230002", "--agent", "+15551230001")
    assert code == 0 and out.endswith("updated: 3 setting(s) changed\n")
    number = sim.number("+15551230002")
    assert number is not None
    assert (
        number.fields["voice_url"] == f"{PUBLIC}/twilio/voice?agent=%2B15551230001"
    )  # answered by that agent
    assert number.fields["voice_fallback_url"] == f"{PUBLIC}/twilio/fallback"
    assert number.fields["status_callback"] == f"{PUBLIC}/twilio/status"
    assert number.fields["voice_method"] == number.fields["status_callback_method"] == "POST"
    code, out, _ = await run(env, "numbers", "point", "+15551230002", "--agent", "+15551230001")
    assert code == 0 and out.endswith("already pointed here: nothing to change\n")
    code, out, _ = await run(env, "numbers", "list")
    assert "here      agent +15551230001" in out.splitlines()[1]


@pytest.mark.parametrize(("argv", "code", "line"), [
    (["numbers", "point", "+15551230001", "--agent", "sales"], 2,
     "error: agent: 'sales' is not in the agents file"),
    (["numbers", "point", "+15559990000"], 1,
     f"error: +15559990000 is not a number of account {ACCOUNT} (see: numbers list)"),
    (["numbers", "point", "15551230001"], 2,
     "error: '15551230001' is not an E.164 number (+ and 8 to 15 digits)"),
    (["call", "+15557650001", "--agent", "+15551230001"], 2,
     "error: param customer: missing (the agent +15551230001 uses {{customer}})"),
    (["call", "+15557650001", "--agent", "+15551230001", "--param", "customer"], 2,
     "error: --param customer: expected name=value"),
    (["call", "+15557650001", "--agent", "default", "--param", "x=1"], 2,
     "error: from: required (the agent has no number of its own to call from)\n"
     "error: param x: the agent default has no {{x}} (its placeholders: none)"),
    (["call", "+15557650001", "--agent", "+15551230001", "--param", "customer=Ada",
      "--from", "+15550001111"], 1,
     "error: Twilio error 21210: The source phone number provided, +15550001111, is not yet verified for "
     "your account. You may only make calls from phone numbers that you've verified or purchased from "
     "Twilio. (the From number must be a number of this account or a verified caller ID)"),
    (["call", "+445550001111", "--agent", "+15551230001", "--param", "customer=Ada"], 1,
     "error: Twilio error 21215: Account not authorized to call +445550001111. Perhaps you need to enable "
     "some international permissions: https://www.twilio.com/console/voice/calls/geo-permissions/low-risk "
     "(enable calls to that country in the Twilio console (Voice > Settings > Geo permissions))"),
])  # fmt: skip
async def test_each_error_is_one_clear_line(
    env: dict[str, str], argv: list[str], code: int, line: str
) -> None:
    got, out, err = await run(env, *argv)
    assert (got, out, err) == (code, "", line + "\n")


async def test_twilio_authentication_and_an_unreachable_twilio(env: dict[str, str]) -> None:
    got, _, err = await run({**env, "TWILIO_AUTH_TOKEN": "wrong-token"}, "numbers", "list")
    assert (got, err) == (1, "error: Twilio error 20003: Authenticate (check TWILIO_ACCOUNT_SID and "
                             "TWILIO_AUTH_TOKEN)\n")  # fmt: skip
    got, _, err = await run({**env, "TWILIO_API_BASE_URL": "http://127.0.0.1:9"}, "numbers", "list")
    assert (got, err) == (1, "error: cannot reach Twilio at http://127.0.0.1:9 (ConnectionError)\n")


async def test_bad_settings_are_listed_one_line_each(env: dict[str, str]) -> None:
    got, _, err = await run(
        {**env, "PUBLIC_BASE_URL": "http://x", "TWILIO_ACCOUNT_SID": "nope"}, "numbers", "list"
    )
    assert got == 2
    assert err.splitlines() == [
        "error: settings: PUBLIC_BASE_URL: must start with https:// (Twilio requires TLS for webhooks and "
        "media streams)",
        "error: settings: TWILIO_ACCOUNT_SID: must be AC followed by 32 hex digits",
    ]


async def test_a_call_is_placed_with_its_variables_and_amd(
    env: dict[str, str], sim: TwilioRestSimulator
) -> None:
    argv = ["call", "+15557650001", "--agent", "+15551230001", "--param", "customer=Ada Lovelace", "--amd"]
    got, out, err = await run(env, *argv)
    assert (got, err) == (0, "")
    sid = out.split()[0]
    placed = sim.calls[sid]
    assert out == f"{sid} queued: +15557650001 from +15551230001, agent +15551230001, answering-machine " \
                  "detection on\n"  # fmt: skip
    assert placed.first("MachineDetection") == "DetectMessageEnd"
    stream = ET.fromstring(placed.first("Twiml")).find("Connect/Stream")
    assert stream is not None
    parameters = {p.get("name"): p.get("value") for p in stream.iter("Parameter")}
    assert parameters["var_customer"] == "Ada Lovelace" and str(parameters["nonce"]).startswith("cli.")


def test_python_m_service_dispatches_to_these_commands(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "numbers", "point", "+1555"], capture_output=True, text=True,
        cwd=tmp_path, timeout=60, env={"PATH": "", "TWILIO_AUTH_TOKEN": TOKEN, "PUBLIC_BASE_URL": PUBLIC,
                                       "AGENTS_FILE": str(tmp_path / "missing.toml")},
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: agents file: ")
