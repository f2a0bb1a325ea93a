"""The Twilio REST simulator through the real twilio package: calls created, fetched and updated, numbers
listed and updated, Twilio's errors, and the signed status callbacks it sends (checked the way a service
checks them, with twilio's RequestValidator over the public URL)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from service.config import Settings
from service.outbound import twilio_error
from service.sim.twilio_rest import Human, TwilioRestSimulator, Unanswered

pytestmark = pytest.mark.timeout(60)

ACCOUNT = "AC" + "3" * 32
TOKEN = "rest-sim-auth-token"
OURS = "+15551230001"
PUBLIC = "https://app.example.test"
T = TypeVar("T")


@dataclass
class Receiver:
    """The application side: every callback, and whether its signature was right for the public URL."""

    requests: list[tuple[str, dict[str, str], bool]] = field(default_factory=list)
    base: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post()) if request.method == "POST" else {}
        url = PUBLIC + request.path_qs
        valid = RequestValidator(TOKEN).validate(url, form, request.headers.get("X-Twilio-Signature", ""))
        fields = {k: str(v) for k, v in form.items()}
        self.requests.append((request.method + " " + request.path_qs, fields, valid))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    rec.base = f"http://{host}:{port}"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def sim(receiver: Receiver) -> AsyncIterator[TwilioRestSimulator]:
    twilio = TwilioRestSimulator(
        account_sid=ACCOUNT, auth_token=TOKEN, numbers=[OURS, "+15551230002", "+15551230003"],
        verified=["+15550009999"], server_http_base=receiver.base, speed=20,
        callees={"+15557650001": Unanswered("busy", ring_ms=100), "+15557650002": Human(ring_ms=100)},
    )  # fmt: skip
    await twilio.start()
    yield twilio
    await twilio.stop()


def client(sim: TwilioRestSimulator, token: str = TOKEN) -> Client:
    c = Client(ACCOUNT, token)
    c.api.base_url = sim.url
    return c


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def create_kwargs(to: str, **extra: Any) -> dict[str, Any]:
    return {"to": to, "from_": OURS, "twiml": "<Response><Say>Hello.</Say><Hangup/></Response>",
            "status_callback": PUBLIC + "/status?agent=a", "status_callback_method": "POST",
            "status_callback_event": ["initiated", "ringing", "answered", "completed"], **extra}  # fmt: skip


async def test_a_call_is_created_fetched_and_reported_through_signed_status_callbacks(
    sim: TwilioRestSimulator, receiver: Receiver
) -> None:
    call = await blocking(client(sim).calls.create, **create_kwargs("+15557650002"))
    assert call.sid.startswith("CA") and len(call.sid) == 34
    assert (call.status, call.direction) == ("queued", "outbound-api")
    assert (call.to, call._from) == ("+15557650002", OURS)
    assert isinstance(call.date_created, dt.datetime)
    assert call.uri == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call.sid}.json"
    done = await sim.wait_call(call.sid)
    assert done.statuses == ["initiated", "ringing", "in-progress", "completed"]
    assert done.record is not None and done.record.end_reason == "no_stream"  # <Say><Hangup/>: no stream
    assert [p["SequenceNumber"] for _, p, _ in receiver.requests] == ["0", "1", "2", "3"]
    assert all(valid for _, _, valid in receiver.requests)
    first, last = receiver.requests[0][1], receiver.requests[-1][1]
    assert receiver.requests[0][0] == "POST /status?agent=a"
    assert first["CallbackSource"] == "call-progress-events" and first["Direction"] == "outbound-api"
    assert (last["CallStatus"], last["CallDuration"], last["CallSid"]) == ("completed", "0", call.sid)
    fetched = await blocking(client(sim).calls(call.sid).fetch)
    assert (fetched.status, fetched.duration) == ("completed", "0")


async def test_an_unanswered_call_ends_with_its_status_and_only_the_events_asked_for(
    sim: TwilioRestSimulator, receiver: Receiver
) -> None:
    kwargs = create_kwargs("+15557650001")
    del kwargs["status_callback_event"]  # Twilio's default: completed only
    call = await blocking(client(sim).calls.create, **kwargs)
    done = await sim.wait_call(call.sid)
    assert done.statuses == ["busy"]
    assert [p["CallStatus"] for _, p, _ in receiver.requests] == ["busy"]


async def test_a_ringing_call_is_canceled_and_an_ended_one_cannot_be_updated(
    sim: TwilioRestSimulator,
) -> None:
    sim.callees["+15557650003"] = Human(ring_ms=60_000)
    c = client(sim)
    call = await blocking(c.calls.create, **create_kwargs("+15557650003"))
    updated = await blocking(c.calls(call.sid).update, status="canceled")
    assert updated.sid == call.sid
    done = await sim.wait_call(call.sid)
    assert done.statuses[-1] == "canceled" and done.status == "canceled"
    with pytest.raises(TwilioRestException) as info:
        await blocking(c.calls(call.sid).update, status="completed")
    assert (info.value.code, info.value.status) == (21220, 400)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the twilio package's use of aiohttp
async def test_the_async_client_works_too(sim: TwilioRestSimulator) -> None:
    http = AsyncTwilioHttpClient()
    try:
        c = Client(ACCOUNT, TOKEN, http_client=http)
        c.api.base_url = sim.url
        call = await c.calls.create_async(**create_kwargs("+15557650001"))
        events = sim.calls[call.sid].params["StatusCallbackEvent"]  # a repeated form field
        assert events == ["initiated", "ringing", "answered", "completed"]
    finally:
        await http.close()


@pytest.mark.parametrize(
    ("kwargs", "code", "status"),
    [
        ({"to": "12345"}, 21211, 400),  # not a phone number
        ({"from_": "+15550001111"}, 21210, 400),  # neither ours nor verified
        ({"from_": "0800"}, 21212, 400),
        ({"to": "+445550001111"}, 21215, 400),  # no geographic permission for +44
        ({"twiml": "<Response>" + "<Pause/>" * 600 + "</Response>"}, 32018, 400),
        ({"status_callback": "not a url"}, 21502, 400),
    ],
)
async def test_twilio_errors_have_twilios_codes_and_shape(
    sim: TwilioRestSimulator, kwargs: dict[str, Any], code: int, status: int
) -> None:
    with pytest.raises(TwilioRestException) as info:
        await blocking(client(sim).calls.create, **{**create_kwargs("+15557650002"), **kwargs})
    assert (info.value.code, info.value.status) == (code, status)
    assert sim.calls == {}


async def test_a_verified_caller_id_may_call(sim: TwilioRestSimulator) -> None:
    kwargs = {**create_kwargs("+15557650001"), "from_": "+15550009999"}
    call = await blocking(client(sim).calls.create, **kwargs)
    assert call.status == "queued"


async def test_wrong_credentials_and_unknown_calls(sim: TwilioRestSimulator, make_settings: Any) -> None:
    with pytest.raises(TwilioRestException) as info:
        await blocking(client(sim, "wrong-token").calls.create, **create_kwargs("+15557650001"))
    assert (info.value.code, info.value.status) == (20003, 401)
    with pytest.raises(TwilioRestException) as info:
        await blocking(client(sim).calls("CA" + "0" * 32).fetch)
    assert (info.value.code, info.value.status) == (20404, 404)
    with pytest.raises(TwilioException) as page:  # a list that fails raises the generic exception
        await blocking(client(sim, "wrong-token").incoming_phone_numbers.list)
    settings: Settings = make_settings(TWILIO_API_BASE_URL=sim.url)
    assert str(twilio_error(page.value, settings)) == (
        "Twilio error 20003: Authenticate (check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)"
    )


async def test_numbers_are_listed_filtered_paged_and_updated(sim: TwilioRestSimulator) -> None:
    c = client(sim)
    numbers = await blocking(c.incoming_phone_numbers.list, page_size=2)  # two pages, followed
    assert [n.phone_number for n in numbers] == [OURS, "+15551230002", "+15551230003"]
    (ours,) = await blocking(c.incoming_phone_numbers.list, phone_number=OURS, limit=1)
    assert (ours.friendly_name, ours.voice_url, ours.sid[:2]) == ("(555) 123-0001", None, "PN")
    updated = await blocking(
        c.incoming_phone_numbers(ours.sid).update, voice_url=PUBLIC + "/twilio/voice", voice_method="POST",
        status_callback=PUBLIC + "/twilio/status",
    )  # fmt: skip
    assert (updated.voice_url, updated.voice_method, updated.status_callback) == (
        PUBLIC + "/twilio/voice", "POST", PUBLIC + "/twilio/status",
    )  # fmt: skip
    fetched = await blocking(c.incoming_phone_numbers(ours.sid).fetch)
    assert fetched.voice_url == PUBLIC + "/twilio/voice"
    with pytest.raises(TwilioRestException) as info:
        await blocking(c.incoming_phone_numbers(ours.sid).update, voice_url="ftp://nope")
    assert info.value.code == 21502
    assert await blocking(c.incoming_phone_numbers.list, phone_number="+15559999999") == []
