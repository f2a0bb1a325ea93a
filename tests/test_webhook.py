from __future__ import annotations

import io
import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

import pytest
from quart import Quart
from twilio.request_validator import RequestValidator

from service.agents import AgentStore
from service.config import Settings
from service.logs import bind_call, call_id_var, configure_logging
from service.web.app import APOLOGY, NOT_IN_SERVICE, create_app, state_of
from service.web.security import TokenCheck, check_stream_token

NOW = 1_800_000_000.0
CALL = "CA" + "ab" * 16
VOICE = "/twilio/voice"


@pytest.fixture
def app(settings: Settings, agents_path: Path) -> Quart:
    return create_app(settings, agents=AgentStore(agents_path), clock=lambda: NOW)


def call_params(**overrides: str) -> dict[str, str]:
    params = {
        "CallSid": CALL,
        "AccountSid": "AC" + "cd" * 16,
        "From": "+15557654321",
        "To": "+15551230001",
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v != ""}


def sign(settings: Settings, params: Mapping[str, str], url: str | None = None) -> str:
    signed_url = url or settings.public_https_url(VOICE)
    return str(RequestValidator(settings.twilio_auth_token).compute_signature(signed_url, params))


async def post_voice(
    app: Quart, params: dict[str, str], signature: str | None, path: str = VOICE
) -> tuple[int, str, str]:
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    response = await app.test_client().post(path, form=params, headers=headers)
    return response.status_code, response.content_type or "", await response.get_data(as_text=True)


def rewrite(path: Path, text: str) -> None:
    """Edit the agents file and move its mtime on, so the change is seen even on a coarse clock."""
    path.write_text(text, encoding="utf-8")
    later = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))


def stream_parameters(root: ET.Element) -> dict[str, str]:
    stream = root.find("./Connect/Stream")
    assert stream is not None
    return {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}


# --- the signed webhook ---------------------------------------------------------------------------------


async def test_signed_webhook_answers_connect_stream(app: Quart, settings: Settings) -> None:
    params = call_params()
    status, content_type, body = await post_voice(app, params, sign(settings, params))
    assert status == 200
    assert content_type.startswith("text/xml")
    root = ET.fromstring(body)
    assert root.tag == "Response"
    assert [child.tag for child in root] == ["Connect", "Say", "Hangup"]
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.attrib["url"] == "wss://voice.example.test/twilio/media"
    assert "track" not in stream.attrib  # <Connect> allows the inbound track only
    parameters = stream_parameters(root)
    assert set(parameters) == {"agent", "token", "from", "to"}
    assert parameters["agent"] == "+15551230001"
    assert (parameters["from"], parameters["to"]) == ("+15557654321", "+15551230001")
    assert all(len(name) + len(value) < 500 for name, value in parameters.items())
    token = parameters["token"]
    assert (
        check_stream_token(settings.stream_token_secret, token, CALL, "+15551230001", NOW + 1)
        is TokenCheck.OK
    )
    assert check_stream_token(settings.stream_token_secret, token, CALL, "default", NOW + 1) is TokenCheck.BAD
    assert check_stream_token(settings.stream_token_secret, token, CALL, "+15551230001", NOW + 300) is (
        TokenCheck.EXPIRED
    )
    say = root.find("Say")
    assert say is not None and say.text == APOLOGY


async def test_unknown_number_gets_the_default_agent(app: Quart, settings: Settings) -> None:
    params = call_params(To="+15559990000")
    status, _, body = await post_voice(app, params, sign(settings, params))
    assert status == 200
    assert stream_parameters(ET.fromstring(body))["agent"] == "default"


async def test_no_agent_and_no_default_says_sorry_and_hangs_up(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "only-one.toml"
    path.write_text('[numbers."+15551230001"]\ninstructions = "x"\n', encoding="utf-8")
    app = create_app(settings, agents=AgentStore(path), clock=lambda: NOW)
    params = call_params(To="+15559990000")
    status, content_type, body = await post_voice(app, params, sign(settings, params))
    assert status == 200 and content_type.startswith("text/xml")
    root = ET.fromstring(body)
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == NOT_IN_SERVICE


async def test_webhook_follows_agents_file_edits(app: Quart, settings: Settings, agents_path: Path) -> None:
    params = call_params(To="+15559990000")
    _, _, body = await post_voice(app, params, sign(settings, params))
    assert stream_parameters(ET.fromstring(body))["agent"] == "default"
    rewrite(agents_path, '[numbers."+15559990000"]\ninstructions = "New line."\n')
    _, _, body = await post_voice(app, params, sign(settings, params))
    assert stream_parameters(ET.fromstring(body))["agent"] == "+15559990000"
    assert state_of(app).agents.by_key("default") is None


async def test_a_signed_query_string_is_part_of_the_url(app: Quart, settings: Settings) -> None:
    params = call_params()
    signed = sign(settings, params, settings.public_https_url(VOICE) + "?line=main")
    status, _, _ = await post_voice(app, params, signed, path=VOICE + "?line=main")
    assert status == 200
    status, _, _ = await post_voice(app, params, sign(settings, params), path=VOICE + "?line=main")
    assert status == 403


async def test_parameters_too_long_for_twilio_are_left_out(app: Quart, settings: Settings) -> None:
    long_from = "sip:" + "a" * 600 + "@example.test"
    params = call_params(From=long_from)
    status, _, body = await post_voice(app, params, sign(settings, params))
    assert status == 200
    assert set(stream_parameters(ET.fromstring(body))) == {"agent", "token", "to"}


# --- rejections -----------------------------------------------------------------------------------------


async def test_forged_or_missing_signature_is_403(
    app: Quart, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    params = call_params()
    good = sign(settings, params)
    forged = RequestValidator("not-the-auth-token").compute_signature(
        settings.public_https_url(VOICE), params
    )
    tampered = dict(params, To="+15551230002")
    caplog.set_level(logging.WARNING)
    for form, signature in ((params, forged), (params, None), (params, ""), (tampered, good)):
        status, content_type, body = await post_voice(app, form, signature)
        assert status == 403
        assert content_type.startswith("text/plain") and len(body) < 40
    assert "Connect" not in body
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "rejected" in messages
    assert forged not in messages and good not in messages


async def test_signature_over_the_host_header_url_is_403(app: Quart, settings: Settings) -> None:
    params = call_params()
    # What a server that trusts Host would compute: the test client's own URL.
    for url in ("http://localhost/twilio/voice", "https://localhost/twilio/voice"):
        status, _, _ = await post_voice(app, params, sign(settings, params, url))
        assert status == 403


async def test_missing_call_sid_or_to_is_400(app: Quart, settings: Settings) -> None:
    for params in (call_params(CallSid=""), call_params(To=""), call_params(CallSid="CA bad/sid")):
        status, _, _ = await post_voice(app, params, sign(settings, params))
        assert status == 400


async def test_other_account_is_403_when_account_sid_is_configured(
    make_settings,
    agents_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    settings = make_settings(TWILIO_ACCOUNT_SID="AC" + "ef" * 16)
    app = create_app(settings, agents=AgentStore(agents_path), clock=lambda: NOW)
    params = call_params()
    status, _, _ = await post_voice(app, params, sign(settings, params))
    assert status == 403
    params = call_params(AccountSid="AC" + "ef" * 16)
    status, _, _ = await post_voice(app, params, sign(settings, params))
    assert status == 200


async def test_bad_bodies_are_4xx(app: Quart, settings: Settings) -> None:
    client = app.test_client()
    signature = sign(settings, {})
    json_body = await client.post(VOICE, json={"CallSid": CALL}, headers={"X-Twilio-Signature": signature})
    assert json_body.status_code == 400  # signed with no form fields: nothing to answer
    garbage = await client.post(
        VOICE,
        data=b"\xff\xfe%%%&&&===",
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"},
    )
    assert garbage.status_code == 403
    oversized = await client.post(VOICE, form={"CallSid": CALL, "Pad": "x" * 200_000})
    assert oversized.status_code == 413
    get = await client.get(VOICE)
    assert get.status_code == 405


async def test_healthz(app: Quart) -> None:
    response = await app.test_client().get("/healthz")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}


def test_state_is_reachable_from_the_app(app: Quart, settings: Settings) -> None:
    state = state_of(app)
    assert state.settings is settings
    assert state.clock() == NOW
    assert len(state.ops.seen_tokens) == 0 and not state.ops.bridges
    with pytest.raises(TypeError):
        state_of(Quart("other"))


def test_create_app_without_settings_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, agents_path: Path, restore_logging: None
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    for name, value in {
        "OPENAI_API_KEY": "sk-env-key-0000000000",
        "TWILIO_AUTH_TOKEN": "env-auth-token-000000",
        "PUBLIC_BASE_URL": "https://env.example.test/",
        "AGENTS_FILE": str(agents_path),
        "LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(name, value)
    app = create_app()
    assert state_of(app).settings.public_base_url == "https://env.example.test"
    assert logging.getLogger().level == logging.WARNING


# --- logging --------------------------------------------------------------------------------------------


async def test_json_logs_carry_the_call_id_and_no_secrets(
    app: Quart, settings: Settings, restore_logging: None
) -> None:
    out = io.StringIO()
    configure_logging(
        "DEBUG", out, secrets=[settings.openai_api_key, settings.twilio_auth_token, "leaky-secret-value"]
    )
    params = call_params()
    good = sign(settings, params)
    status, _, body = await post_voice(app, params, good)
    assert status == 200
    forged = sign(settings, params, "https://evil.example.test/twilio/voice")
    assert (await post_voice(app, params, forged))[0] == 403
    logging.getLogger("tests").info("oops %s", "leaky-secret-value")

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    answered = [e for e in lines if e["logger"] == "service.web.app" and "agent" in e["msg"]]
    assert answered and answered[0]["call_id"] == CALL and answered[0]["level"] == "INFO"
    assert {"ts", "level", "logger", "call_id", "msg"} <= set(answered[0])
    rejected = [e for e in lines if "rejected" in e["msg"]]
    assert rejected and rejected[0]["call_id"] is None and rejected[0]["level"] == "WARNING"
    assert lines[-1]["msg"] == "oops [redacted]"
    token = stream_parameters(ET.fromstring(body))["token"]
    text = out.getvalue()
    for secret in (settings.openai_api_key, settings.twilio_auth_token, good, forged, token, "+15557654321"):
        assert secret not in text


def test_json_log_fields(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", out)
    log = logging.getLogger("tests.fields")
    with bind_call("CA123"):
        log.info("call ended: %d frames", 42, extra={"summary": {"frames_in": 42}})
        with bind_call("CA456"):
            log.info("nested")
        log.debug("hidden")
    assert call_id_var.get() is None
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, nested, failed = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["msg"] == "call ended: 42 frames" and first["call_id"] == "CA123"
    assert first["summary"] == {"frames_in": 42}
    assert nested["call_id"] == "CA456"
    assert failed["call_id"] is None and "ValueError: boom" in failed["exc"]


def test_text_logs_on_a_tty(restore_logging: None) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    configure_logging("INFO", out, secrets=["hunter2-secret"])
    configure_logging("INFO", out, secrets=["hunter2-secret"])  # reconfiguring replaces, not duplicates
    with bind_call("CA789"):
        logging.getLogger("tests.tty").warning("password is %s", "hunter2-secret")
    [line] = out.getvalue().splitlines()
    assert "WARNING" in line and "tests.tty [CA789] password is [redacted]" in line
    assert not line.startswith("{")
