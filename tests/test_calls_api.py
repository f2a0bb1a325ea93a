"""The calls API's authentication and checks, the call callbacks, and how an outbound call's stream token
is checked at ``start`` (through the app, no sockets; Twilio is the REST simulator where one is needed)."""

from __future__ import annotations

import inspect
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from twilio.request_validator import RequestValidator

from service.agents import AgentStore
from service.config import Settings
from service.core.inputs import StartAuthorized, StartRejected
from service.outbound import CallRequest, prepare
from service.sim.twilio_rest import TwilioRestSimulator, Unanswered
from service.web.app import create_app, state_of
from service.web.calls_api import statuses_of
from service.web.media import authorizer
from service.web.security import mint_stream_token
from service.wire import twilio

pytestmark = pytest.mark.timeout(60)

KEY = "test-dialtone-api-key-0123456789"
ACCOUNT = "AC" + "4" * 32
NOW = 1_800_000_000.0
CALL = "CA" + "ab" * 16
AGENTS = """
[default]
instructions = "You are the receptionist."

[numbers."+15551230001"]
instructions = "You call {{customer}} about {{day}}."
greeting = "Hi {{customer}}."
voicemail_message = "Call us back about {{day}}."
max_call_s = 90
"""
VALUES = {"customer": "Ada", "day": "Tuesday"}
NOWHERE = "http://127.0.0.1:9"  # no Twilio: a refused connection (tests never leave the machine)


@pytest.fixture
def agents_file(tmp_path: Path) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(AGENTS, encoding="utf-8")
    return path


@pytest.fixture
async def sim() -> AsyncIterator[TwilioRestSimulator]:
    from conftest import TEST_AUTH_TOKEN

    twilio_sim = TwilioRestSimulator(
        account_sid=ACCOUNT, auth_token=TEST_AUTH_TOKEN, numbers=["+15551230001"], speed=50,
        callees={"+15557650001": Unanswered("no-answer", ring_ms=60_000)},
    )  # fmt: skip
    await twilio_sim.start()
    yield twilio_sim
    await twilio_sim.stop()


def make_app(make_settings: Any, agents_file: Path, **env: str) -> Quart:
    env.setdefault("TWILIO_API_BASE_URL", NOWHERE)
    settings: Settings = make_settings(AGENTS_FILE=str(agents_file), TWILIO_ACCOUNT_SID=ACCOUNT, **env)
    return create_app(settings, agents=AgentStore(agents_file), clock=lambda: NOW)


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401), (bearer("wrong-key-0123456789abcdef"), 401), ({"Authorization": f"Basic {KEY}"}, 401),
    (bearer(KEY), 400),  # past the key: the empty body is the problem
])  # fmt: skip
async def test_the_api_wants_the_bearer_key(
    make_settings: Any, agents_file: Path, headers: dict[str, str], status: int
) -> None:
    app = make_app(make_settings, agents_file, DIALTONE_API_KEY=KEY)
    client = app.test_client()
    response = await client.post("/calls", data="", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="dialtone"'
        assert KEY not in await response.get_data(as_text=True)
    got = await client.get("/calls/" + CALL, headers=headers)
    assert got.status_code == (401 if status == 401 else 502)  # Twilio cannot be reached here
    if status != 401:
        assert (await got.get_json())["error"] == f"cannot reach Twilio at {NOWHERE} (ConnectionError)"


async def test_without_a_key_the_api_is_off(make_settings: Any, agents_file: Path) -> None:
    app = make_app(make_settings, agents_file)
    response = await app.test_client().post("/calls", json={"to": "+15557650001"}, headers=bearer(KEY))
    assert response.status_code == 503
    assert (await response.get_json())["error"] == "the calls API is off: set DIALTONE_API_KEY"


async def test_every_problem_with_a_request_is_listed(make_settings: Any, agents_file: Path) -> None:
    app = make_app(make_settings, agents_file, DIALTONE_API_KEY=KEY)
    client = app.test_client()
    response = await client.post("/calls", json={"to": 5, "params": [], "amd": "yes", "colour": 1},
                                 headers=bearer(KEY))  # fmt: skip
    assert response.status_code == 400
    assert (await response.get_json())["problems"] == [
        "colour: unknown field", "to: required (a string)", "agent: required (a string)",
        "params: must be an object of strings", "amd: must be true or false",
    ]  # fmt: skip
    body = {"to": "+1555", "agent": "+15559999999", "params": {"customer": "Ada"}}
    response = await client.post("/calls", json=body, headers=bearer(KEY))
    assert (await response.get_json())["problems"] == [
        "to: '+1555' is not an E.164 number (+ and 8 to 15 digits)",
        "agent: '+15559999999' is not in the agents file (agents: +15551230001, default)",
        "from: required (the agent has no number of its own to call from)",
    ]
    body = {"to": "+15557650001", "agent": "+15551230001", "params": {"customer": "Ada", "x": "1"}}
    response = await client.post("/calls", json=body, headers=bearer(KEY))
    assert response.status_code == 400
    assert (await response.get_json())["problems"] == [
        "param x: the agent +15551230001 has no {{x}} (its placeholders: customer, day)",
        "param day: missing (the agent +15551230001 uses {{day}})",
    ]


async def test_a_call_is_placed_with_its_twiml_and_callbacks_and_twilio_errors_come_back_in_one_line(
    make_settings: Any, agents_file: Path, sim: TwilioRestSimulator
) -> None:
    app = make_app(make_settings, agents_file, DIALTONE_API_KEY=KEY, TWILIO_API_BASE_URL=sim.url)
    client = app.test_client()
    body = {"to": "+15557650001", "agent": "+15551230001", "params": VALUES, "amd": True}
    response = await client.post("/calls", json=body, headers=bearer(KEY))
    assert response.status_code == 201, await response.get_data(as_text=True)
    sid = (await response.get_json())["call_sid"]
    placed = sim.calls[sid]
    assert placed.first("From") == "+15551230001" and placed.first("TimeLimit") == "90"
    assert placed.first("MachineDetection") == "DetectMessageEnd" and placed.first("AsyncAmd") == "true"
    assert placed.first("AsyncAmdStatusCallback") == "https://voice.example.test/twilio/amd"
    assert placed.first("StatusCallback") == "https://voice.example.test/twilio/status?agent=%2B15551230001"
    assert placed.params["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    stream = ET.fromstring(placed.first("Twiml")).find("Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://voice.example.test/twilio/media"
    parameters = {p.get("name"): p.get("value") for p in stream.iter("Parameter")}
    assert parameters["nonce"].startswith("api.") and parameters["direction"] == "outbound-api"
    assert (parameters["var_customer"], parameters["var_day"]) == ("Ada", "Tuesday")
    status = await client.get(f"/calls/{sid}", headers=bearer(KEY))
    assert (await status.get_json())["status"] == "queued"

    body["from"] = "+15550001111"  # not a number of the account
    refused = await client.post("/calls", json=body, headers=bearer(KEY))
    assert refused.status_code == 400
    answer = await refused.get_json()
    assert answer["twilio_code"] == 21210 and answer["problems"] == [answer["error"]]
    assert answer["error"].startswith("Twilio error 21210: The source phone number provided, +15550001111")
    unknown = await client.get("/calls/CA" + "0" * 32, headers=bearer(KEY))
    assert unknown.status_code == 404


def signed(settings: Settings, path: str, form: dict[str, str]) -> dict[str, str]:
    url = settings.public_https_url(path)
    return {"X-Twilio-Signature": RequestValidator(settings.twilio_auth_token).compute_signature(url, form)}


async def test_status_callbacks_are_signed_and_applied_in_sequence(
    make_settings: Any, agents_file: Path
) -> None:
    app = make_app(make_settings, agents_file, DIALTONE_API_KEY=KEY)
    settings, client = state_of(app).settings, app.test_client()
    path = "/twilio/status?agent=%2B15551230001"

    def form(status: str, sequence: int, **extra: str) -> dict[str, str]:
        return {"CallSid": CALL, "AccountSid": ACCOUNT, "CallStatus": status, "SequenceNumber": str(sequence),
                "Direction": "outbound-api", "To": "+15557650001", "From": "+15551230001",
                **extra}  # fmt: skip

    unsigned = await client.post(path, form=form("ringing", 1))
    assert unsigned.status_code == 403
    for status, sequence, extra in (("completed", 3, {"CallDuration": "42"}), ("in-progress", 2, {}),
                                    ("ringing", 1, {})):  # fmt: skip
        fields = form(status, sequence, **extra)
        response = await client.post(path, form=fields, headers=signed(settings, path, fields))
        assert response.status_code == 204
    known = statuses_of(app).get(CALL)
    assert known is not None  # the late "in-progress" and "ringing" did not undo "completed"
    assert (known.status, known.duration_s, known.agent) == ("completed", 42, "+15551230001")
    got = await (await client.get(f"/calls/{CALL}", headers=bearer(KEY))).get_json()
    assert got["status"] == "completed" and got["source"] == "callbacks"

    amd = {"CallSid": CALL, "AccountSid": ACCOUNT, "AnsweredBy": "machine_end_beep"}
    response = await client.post("/twilio/amd", form=amd, headers=signed(settings, "/twilio/amd", amd))
    assert response.status_code == 204  # no live call in this process: noted only
    assert known.answered_by == "machine_end_beep"
    forged = await client.post("/twilio/amd", form=amd, headers={"X-Twilio-Signature": "AAAA"})
    assert forged.status_code == 403


async def test_a_number_pointed_at_an_agent_gets_that_agent(make_settings: Any, agents_file: Path) -> None:
    app = make_app(make_settings, agents_file)
    settings = state_of(app).settings
    form = {"CallSid": CALL, "AccountSid": ACCOUNT, "From": "+15557654321", "To": "+15551230001"}
    path = "/twilio/voice?agent=default"
    response = await app.test_client().post(path, form=form, headers=signed(settings, path, form))
    twiml = ET.fromstring(await response.get_data())
    parameters = {p.get("name"): p.get("value") for p in twiml.iter("Parameter")}
    assert parameters["agent"] == "default"
    fallback = await app.test_client().post("/twilio/fallback", form=form)
    assert b"<Hangup />" in await fallback.get_data()


# --- the stream token of an outbound call ----------------------------------------------------------------


def start_of(parameters: dict[str, str], call_sid: str = CALL) -> twilio.Start:
    return twilio.Start("MZ" + "1" * 32, ACCOUNT, call_sid, ("inbound",), parameters,
                        twilio.MediaFormat("audio/x-mulaw", 8000, 1))  # fmt: skip


async def verdict(app: Quart, start: twilio.Start) -> StartAuthorized | StartRejected:
    result = authorizer(state_of(app))(start)
    return await result if inspect.isawaitable(result) else result


def placed_parameters(app: Quart, via: str, values: dict[str, str] = VALUES) -> dict[str, str]:
    state = state_of(app)
    placement = prepare(state.settings, state.agents.book, CallRequest("+15557650001", "+15551230001",
                        params=values), NOW, via=via)  # fmt: skip
    stream = ET.fromstring(placement.twiml).find("Connect/Stream")
    assert stream is not None
    return {str(p.get("name")): str(p.get("value")) for p in stream.iter("Parameter")}


async def test_an_outbound_stream_runs_the_agent_filled_and_offered_the_voicemail_tool(
    make_settings: Any, agents_file: Path
) -> None:
    app = make_app(make_settings, agents_file)
    parameters = placed_parameters(app, "api")
    state_of(app).ops.put_decision("outbound:" + parameters["nonce"], {"call_sid": CALL})  # as POST /calls
    result = await verdict(app, start_of(parameters))
    assert isinstance(result, StartAuthorized)
    agent = result.agent
    assert (agent.instructions, agent.greeting) == ("You call Ada about Tuesday.", "Hi Ada.")
    assert agent.voicemail_message == "Call us back about Tuesday." and agent.voicemail_tool
    assert await verdict(app, start_of(parameters)) == StartRejected("stream token reused")


async def test_an_api_placed_stream_must_come_from_the_call_twilio_named(
    make_settings: Any, agents_file: Path
) -> None:
    app = make_app(make_settings, agents_file)
    parameters = placed_parameters(app, "api")
    state_of(app).ops.put_decision("outbound:" + parameters["nonce"], {"call_sid": CALL})
    other = "CA" + "cd" * 16
    assert await verdict(app, start_of(parameters, other)) == StartRejected(
        "outbound stream token not bound to this CallSid"
    )
    unbound = placed_parameters(app, "api")  # placed, but Twilio's answer never came back
    assert await verdict(app, start_of(unbound)) == StartRejected(
        "outbound stream token not bound to this CallSid"
    )


async def test_a_changed_variable_or_a_forged_nonce_breaks_the_token(
    make_settings: Any, agents_file: Path
) -> None:
    app = make_app(make_settings, agents_file)
    parameters = placed_parameters(app, "cli")
    bad = StartRejected("stream token bad")
    assert await verdict(app, start_of({**parameters, "var_day": "Friday"})) == bad
    assert await verdict(app, start_of({**parameters, "nonce": "cli.other"})) == bad
    assert await verdict(app, start_of({**parameters, "nonce": ""})) == bad  # not an inbound token either
    result = await verdict(app, start_of(parameters))  # the command line's calls need no binding
    assert isinstance(result, StartAuthorized) and result.agent.voicemail_tool


async def test_an_agent_edited_after_placing_the_call_is_refused_not_half_filled(
    make_settings: Any, agents_file: Path
) -> None:
    app = make_app(make_settings, agents_file)
    parameters = placed_parameters(app, "cli")
    edited = AGENTS.replace("about {{day}}.", "about {{day}} at {{time}}.")
    agents_file.write_text(edited, encoding="utf-8")  # noqa: ASYNC240 - a test's fixture file
    result = await verdict(app, start_of(parameters))
    assert isinstance(result, StartRejected)
    assert result.reason == (
        "the call's variables no longer fit the agent: "
        "param time: missing (the agent +15551230001 uses {{time}})"
    )


async def test_inbound_tokens_are_unchanged(make_settings: Any, agents_file: Path) -> None:
    app = make_app(make_settings, agents_file)
    settings = state_of(app).settings
    token = mint_stream_token(settings.stream_token_secret, CALL, "default", NOW, 300)
    result = await verdict(app, start_of({"agent": "default", "token": token}))
    assert isinstance(result, StartAuthorized) and not result.agent.voicemail_tool
