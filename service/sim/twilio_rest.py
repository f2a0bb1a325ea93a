"""A local Twilio REST API (127.0.0.1, aiohttp) that places outbound calls to simulated callees.

The twilio package is pointed at it (``client.api.base_url = sim.url``) and cannot tell the difference
for what Dialtone uses (twilio.md §5-6)::

    POST /2010-04-01/Accounts/{AC}/Calls.json                create (form: To, From, Twiml | Url,
                                                             StatusCallback, StatusCallbackEvent…,
                                                             StatusCallbackMethod, MachineDetection,
                                                             AsyncAmd, AsyncAmdStatusCallback, TimeLimit…)
    GET  /2010-04-01/Accounts/{AC}/Calls/{CA}.json           fetch
    POST /2010-04-01/Accounts/{AC}/Calls/{CA}.json           update: Status=completed|canceled, Twiml, Url
    GET  /2010-04-01/Accounts/{AC}/IncomingPhoneNumbers.json list (PhoneNumber, FriendlyName, PageSize, Page)
    GET|POST /2010-04-01/Accounts/{AC}/IncomingPhoneNumbers/{PN}.json   fetch, update (VoiceUrl…)

Requests are form-encoded and authenticated with HTTP basic auth (AccountSid, auth token); answers are
JSON with Twilio's field names; errors have Twilio's shape (``code``, ``message``, ``more_info``,
``status``) and codes: 20003 authentication, 20404 not found, 21201/21213 To/From missing, 21211
invalid To, 21212 invalid From, 21210 From neither owned nor verified, 21215 no geographic permission for
the To number, 21205 no valid Url or Twiml, 21502 invalid callback URL, 32018 inline TwiML over 4,000
characters, 21220 a call that is no longer in progress.

A created call (``queued``) then lives in a task, its waits ``speed`` times faster than real time:

1. ``initiated`` and ``ringing`` status callbacks (each one asked for in ``StatusCallbackEvent``;
   Twilio's default is ``completed`` only): signed form POSTs (``X-Twilio-Signature`` as Twilio computes
   it), ``SequenceNumber`` from 0, ``CallbackSource=call-progress-events``, an RFC 2822 ``Timestamp``.
2. The callee (:data:`Callee`, chosen by the To number in ``callees``, else :class:`Human`):
   :class:`Unanswered` ends the call ``busy`` / ``no-answer`` / ``failed``. :class:`Human` and
   :class:`Machine` answer (``answered``, reported as ``in-progress``), and the call's TwiML runs through
   the caller simulator (:func:`service.sim.caller.run_twiml`: ``<Connect><Stream>`` on the server at
   ``server_http_base``, then ``<Connect action>``). A human follows its script; a machine plays its
   greeting, a beep, then records in silence until the other side hangs up (or ``record_ms``).
3. With ``MachineDetection`` and ``AsyncAmd=true``, the verdict is POSTed (signed) to
   ``AsyncAmdStatusCallback``: ``AnsweredBy=human`` ``human_after_ms`` into the stream; for a machine,
   ``machine_end_beep`` just after the beep (``DetectMessageEnd``) or ``machine_start`` during the
   greeting (``Enable``). Without ``AsyncAmd`` the detection runs before the TwiML: the call's
   ``answered_by`` is set and the machine's greeting is over when the stream starts.
4. ``TimeLimit`` caps the stream; ``Status=completed`` through the API hangs up (``stop``); at the end,
   ``completed`` (with ``CallDuration`` and ``Duration``), or the final status of an unanswered call.

Everything that happened to a call is in its :class:`SimCall` (``sim.calls[sid]``; ``await
sim.wait_call(sid)``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import json
import logging
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import aiohttp
import numpy as np
from aiohttp import web
from multidict import MultiDictProxy
from twilio.request_validator import RequestValidator

from service.sim.caller import CallRecord, StreamControl, run_twiml
from service.sim.lifecycle import Served
from service.sim.script import At, Clip, HangUp, Say, Step

logger = logging.getLogger(__name__)

Json = dict[str, Any]
API_VERSION = "2010-04-01"
MAX_INLINE_TWIML_CHARS = 4000
MAX_TIME_LIMIT_S = 14_400
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
MACHINE_DETECTION = ("Enable", "DetectMessageEnd")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_CLIENT_OR_SIP = re.compile(r"(client:[A-Za-z0-9_.-]+|sips?:[^\s@]+@[^\s@]+)")
_MESSAGES = {
    20003: "Authenticate",
    21201: "No 'To' number is specified",
    21213: "No 'From' number is specified",
    21205: "Url is not a valid URL",
    32018: "Inline TwiML exceeds the 4000 character limit",
}


# --- the callees -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Human:
    """A person answers after ``ring_ms`` and follows ``script`` (then hangs up once the agent has been
    silent ``end_silence_ms``). Answering-machine detection says ``human`` ``human_after_ms`` in."""

    script: tuple[Step, ...] = ()
    ring_ms: int = 800
    human_after_ms: int = 1500
    end_silence_ms: int = 1500
    end_timeout_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class Machine:
    """An answering machine: answers after ``ring_ms``, plays ``greeting`` then a beep of ``beep_ms``
    (1 kHz), then records (silence) for ``record_ms`` at most. ``detected_after_beep_ms``: when the
    detection reports ``machine_end_beep``."""

    greeting: Clip
    ring_ms: int = 800
    beep_ms: int = 400
    gap_ms: int = 200
    detected_after_beep_ms: int = 300
    record_ms: int = 30_000

    @property
    def beep_at_ms(self) -> int:
        return self.greeting.duration_ms + self.gap_ms

    @property
    def beep_end_ms(self) -> int:
        return self.beep_at_ms + self.beep_ms


@dataclass(frozen=True, slots=True)
class Unanswered:
    """Nobody answers: the call ends ``status`` after ``ring_ms``."""

    status: Literal["busy", "no-answer", "failed"] = "no-answer"
    ring_ms: int = 1500


Callee = Human | Machine | Unanswered


def beep(ms: int, hz: float = 1000.0, rate_hz: int = 8000) -> Clip:
    """A sine tone as a clip (an answering machine's beep)."""
    t = np.arange(rate_hz * ms // 1000) / rate_hz
    pcm = (np.sin(2 * np.pi * hz * t) * 12_000).astype("<i2").tobytes()
    return Clip(name="beep", text="(beep)", rate_hz=rate_hz, pcm=pcm)


# --- what the simulator keeps --------------------------------------------------------------------------


@dataclass(slots=True)
class Callback:
    """One request the simulator made to the application (a status or AMD callback)."""

    kind: Literal["status", "amd", "url"]
    url: str
    method: str
    params: dict[str, str]
    status: int = 0  # 0: the request failed
    body: str = ""


@dataclass(slots=True)
class SimCall:
    """One call placed through the API: its resource fields, its callbacks and its stream."""

    sid: str
    account_sid: str
    to: str
    from_: str
    params: dict[str, list[str]]
    """The create request's form, as sent (every value of a repeated field)."""
    status: str = "queued"
    answered_by: str | None = None
    created: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    updated: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    duration_s: int | None = None
    callbacks: list[Callback] = field(default_factory=list)
    updates: list[dict[str, str]] = field(default_factory=list)
    """Update requests (``Status``, ``Twiml``, ``Url``...) in order."""
    record: CallRecord | None = None
    """The stream, as the callee lived it (None: the call never reached its TwiML)."""
    control: StreamControl = field(default_factory=StreamControl)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    errors: list[str] = field(default_factory=list)
    _sequence: int = 0

    def first(self, name: str, default: str = "") -> str:
        values = self.params.get(name)
        return values[0] if values else default

    @property
    def statuses(self) -> list[str]:
        """``CallStatus`` of each status callback, in the order sent."""
        return [c.params["CallStatus"] for c in self.callbacks if c.kind == "status"]

    @property
    def amd(self) -> list[str]:
        return [c.params["AnsweredBy"] for c in self.callbacks if c.kind == "amd"]

    def next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence - 1)


@dataclass(slots=True)
class PhoneNumber:
    sid: str
    phone_number: str
    fields: dict[str, Any]


class TwilioError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# --- the server ----------------------------------------------------------------------------------------


class TwilioRestSimulator(Served):
    """See the module docstring. ``numbers``: the account's numbers (IncomingPhoneNumbers, and valid
    ``From`` numbers); ``verified``: verified caller IDs (valid ``From`` too); ``permitted``: the To
    prefixes the geographic permissions allow; ``server_http_base``: where the application listens
    (every URL Twilio is given is requested there, at its path and query, and signed as given);
    ``callback_http_bases``: per kind of callback (``status``, ``amd``), another place to send it, as a
    load balancer in front of several instances may (the call's stream on one, its callback on another)."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        numbers: Sequence[str] = (),
        verified: Sequence[str] = (),
        permitted: Sequence[str] = ("+1",),
        callees: Mapping[str, Callee] | None = None,
        server_http_base: str | None = None,
        speed: float = 1.0,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.verified = set(verified)
        self.permitted = tuple(permitted)
        self.callees: dict[str, Callee] = dict(callees or {})
        self.server_http_base = server_http_base
        self.callback_http_bases: dict[str, str] = {}
        self.speed = speed
        self.calls: dict[str, SimCall] = {}
        self.numbers: dict[str, PhoneNumber] = {}
        for number in numbers:
            self.add_number(number)
        self.requests: list[tuple[str, str, int]] = []
        """(method, path, status) of every API request."""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._placed = asyncio.Event()
        self._base = ""

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: set the twilio client's ``api.base_url`` to this."""
        return self._base

    def add_number(self, phone_number: str, friendly_name: str | None = None) -> PhoneNumber:
        sid = "PN" + secrets.token_hex(16)
        now = _rfc2822(dt.datetime.now(dt.UTC))
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/IncomingPhoneNumbers/{sid}"
        fields: dict[str, Any] = {
            "account_sid": self.account_sid, "address_requirements": "none", "address_sid": None,
            "api_version": API_VERSION, "beta": False, "bundle_sid": None,
            "capabilities": {"voice": True, "sms": True, "mms": True, "fax": False},
            "date_created": now, "date_updated": now, "emergency_address_sid": None,
            "emergency_address_status": "unregistered", "emergency_status": "Inactive",
            "friendly_name": friendly_name or _formatted(phone_number), "identity_sid": None,
            "origin": "twilio", "phone_number": phone_number, "sid": sid, "sms_application_sid": "",
            "sms_fallback_method": "POST", "sms_fallback_url": "", "sms_method": "POST", "sms_url": "",
            "status": "in-use", "status_callback": "", "status_callback_method": "POST", "trunk_sid": None,
            "type": "local", "uri": uri + ".json", "voice_application_sid": None,
            "voice_caller_id_lookup": False, "voice_fallback_method": "POST", "voice_fallback_url": None,
            "voice_method": "POST", "voice_receive_mode": "voice", "voice_url": None,
            "subresource_uris": {"assigned_add_ons": uri + "/AssignedAddOns.json"},
        }  # fmt: skip
        number = PhoneNumber(sid, phone_number, fields)
        self.numbers[sid] = number
        return number

    def number(self, phone_number: str) -> PhoneNumber | None:
        return next((n for n in self.numbers.values() if n.phone_number == phone_number), None)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0]
        self._base = f"http://{bound[0]}:{bound[1]}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        logger.debug("= Twilio REST simulator on %s", self._base)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def wait_call(self, sid: str, timeout_s: float = 60.0) -> SimCall:
        """The call, once it is over (its last callback sent)."""
        call = self.calls[sid]
        async with asyncio.timeout(timeout_s):
            await call.done.wait()
        return call

    async def wait_for_call(self, timeout_s: float = 10.0) -> SimCall:
        """The first call placed (waiting for it if there is none yet)."""
        async with asyncio.timeout(timeout_s):
            await self._placed.wait()
        return next(iter(self.calls.values()))

    # --- requests -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            response = await self._route(request)
        except TwilioError as exc:
            response = _error(exc.status, exc.code, exc.message)
        self.requests.append((request.method, request.path, response.status))
        return response

    async def _route(self, request: web.Request) -> web.Response:
        parts = request.path.strip("/").split("/")
        if len(parts) < 4 or parts[0] != API_VERSION or parts[1] != "Accounts":
            raise TwilioError(404, 20404, f"The requested resource {request.path} was not found")
        self._authenticate(request)
        if parts[2] != self.account_sid:
            raise TwilioError(404, 20404, f"The requested resource {request.path} was not found")
        resource = parts[3:]
        match request.method, resource:
            case "POST", ["Calls.json"]:
                return self._create_call(await request.post())
            case "GET", [("Calls"), sid_json]:
                return web.json_response(self._call_json(self._call(sid_json, request.path)))
            case "POST", [("Calls"), sid_json]:
                call = self._call(sid_json, request.path)
                return web.json_response(self._update_call(call, await request.post()))
            case "GET", ["IncomingPhoneNumbers.json"]:
                return web.json_response(self._list_numbers(request))
            case "GET", [("IncomingPhoneNumbers"), sid_json]:
                return web.json_response(self._number(sid_json, request.path).fields)
            case "POST", [("IncomingPhoneNumbers"), sid_json]:
                number = self._number(sid_json, request.path)
                return web.json_response(self._update_number(number, await request.post()))
        raise TwilioError(404, 20404, f"The requested resource {request.path} was not found")

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, password = "", ""
        if scheme.lower() != "basic" or user != self.account_sid or password != self.auth_token:
            raise TwilioError(401, 20003, "Authenticate")

    def _call(self, sid_json: str, path: str) -> SimCall:
        call = self.calls.get(sid_json.removesuffix(".json"))
        if call is None or not sid_json.endswith(".json"):
            raise TwilioError(404, 20404, f"The requested resource {path} was not found")
        return call

    def _number(self, sid_json: str, path: str) -> PhoneNumber:
        number = self.numbers.get(sid_json.removesuffix(".json"))
        if number is None or not sid_json.endswith(".json"):
            raise TwilioError(404, 20404, f"The requested resource {path} was not found")
        return number

    # --- calls ------------------------------------------------------------------------------------------

    def _create_call(self, form: MultiDictProxy[Any]) -> web.Response:
        to, from_ = str(form.get("To", "")).strip(), str(form.get("From", "")).strip()
        if not to:
            raise TwilioError(400, 21201, _MESSAGES[21201])
        if not from_:
            raise TwilioError(400, 21213, _MESSAGES[21213])
        if not (_E164.fullmatch(to) or _CLIENT_OR_SIP.fullmatch(to)):
            raise TwilioError(400, 21211, f"Invalid 'To' Phone Number: {to[:40]}")
        if not _E164.fullmatch(from_):
            raise TwilioError(400, 21212, f"Invalid 'From' Phone Number: {from_[:40]}")
        if self.number(from_) is None and from_ not in self.verified:
            raise TwilioError(
                400, 21210,
                f"The source phone number provided, {from_}, is not yet verified for your account. You may "
                "only make calls from phone numbers that you've verified or purchased from Twilio.",
            )  # fmt: skip
        if to.startswith("+") and not to.startswith(self.permitted):
            raise TwilioError(
                400, 21215,
                f"Account not authorized to call {to}. Perhaps you need to enable some international "
                "permissions: https://www.twilio.com/console/voice/calls/geo-permissions/low-risk",
            )  # fmt: skip
        twiml, url = str(form.get("Twiml", "")), str(form.get("Url", ""))
        if twiml and len(twiml) > MAX_INLINE_TWIML_CHARS:
            raise TwilioError(400, 32018, _MESSAGES[32018])
        if not twiml and not _is_url(url):
            raise TwilioError(400, 21205, _MESSAGES[21205])
        for name in ("StatusCallback", "AsyncAmdStatusCallback", "FallbackUrl"):
            value = str(form.get(name, ""))
            if value and not _is_url(value):
                raise TwilioError(400, 21502, f"Invalid {name}: {value[:80]}")
        for event in form.getall("StatusCallbackEvent", []):
            if event not in STATUS_EVENTS:
                raise TwilioError(400, 21626, f"Invalid StatusCallbackEvent: {str(event)[:40]}")
        detection = str(form.get("MachineDetection", ""))
        if detection and detection not in MACHINE_DETECTION:
            raise TwilioError(400, 21628, f"Invalid MachineDetection: {detection[:40]}")
        limit = str(form.get("TimeLimit", ""))
        if limit and not (limit.isdigit() and 1 <= int(limit) <= MAX_TIME_LIMIT_S):
            raise TwilioError(400, 21609, f"Invalid TimeLimit: {limit[:20]}")
        params = {key: [str(v) for v in form.getall(key)] for key in form}
        call = SimCall("CA" + secrets.token_hex(16), self.account_sid, to, from_, params)
        self.calls[call.sid] = call
        self._placed.set()
        task = asyncio.get_running_loop().create_task(self._live(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(self._call_json(call), status=201)

    def _update_call(self, call: SimCall, form: MultiDictProxy[Any]) -> Json:
        update = {key: str(form.get(key, "")) for key in form}
        call.updates.append(update)
        status = update.get("Status")
        if call.status in ("completed", "busy", "failed", "no-answer", "canceled"):
            raise TwilioError(400, 21220, "Call is not in-progress. Cannot redirect.")
        if status is not None and status not in ("completed", "canceled"):
            raise TwilioError(400, 21218, f"Invalid Status: {status[:20]}")
        if call.status in ("queued", "ringing") and status in ("completed", "canceled"):
            call.cancel.set()
        elif status == "completed" or "Twiml" in update or "Url" in update:
            call.control.hang_up.set()  # new TwiML ends the stream first (the new TwiML is only recorded)
        call.updated = dt.datetime.now(dt.UTC)
        return self._call_json(call)

    def _call_json(self, call: SimCall) -> Json:
        number = self.number(call.from_)
        uri = f"/{API_VERSION}/Accounts/{call.account_sid}/Calls/{call.sid}"
        return {
            "account_sid": call.account_sid, "annotation": None, "answered_by": call.answered_by,
            "api_version": API_VERSION, "caller_name": None, "date_created": _rfc2822(call.created),
            "date_updated": _rfc2822(call.updated), "direction": "outbound-api",
            "duration": str(call.duration_s) if call.duration_s is not None else None,
            "end_time": _rfc2822(call.end_time) if call.end_time else None, "forwarded_from": None,
            "from": call.from_, "from_formatted": _formatted(call.from_), "group_sid": None,
            "parent_call_sid": None, "phone_number_sid": number.sid if number else None, "price": None,
            "price_unit": "USD", "queue_time": "0", "sid": call.sid,
            "start_time": _rfc2822(call.start_time) if call.start_time else None, "status": call.status,
            "subresource_uris": {name: f"{uri}/{name.title().replace('_', '')}.json" for name in (
                "notifications", "recordings", "payments", "events", "siprec", "streams",
                "user_defined_message_subscriptions", "user_defined_messages",
            )},
            "to": call.to, "to_formatted": _formatted(call.to), "trunk_sid": None, "uri": uri + ".json",
        }  # fmt: skip

    # --- a call's life -----------------------------------------------------------------------------------

    async def _live(self, call: SimCall) -> None:
        callee = self.callees.get(call.to, Human())
        try:
            await self._ring(call, callee)
        except Exception as exc:  # the simulator's one supervisor point: a call must always end
            logger.exception("simulated call %s failed", call.sid)
            call.errors.append(f"simulator: {type(exc).__name__}: {exc}")
            if call.status not in ("completed", "busy", "failed", "no-answer", "canceled"):
                await self._finish(call, "failed")
        finally:
            call.done.set()

    async def _ring(self, call: SimCall, callee: Callee) -> None:
        await self._sleep_ms(50)
        await self._status(call, "initiated", event="initiated")
        call.status = "ringing"
        await self._status(call, "ringing", event="ringing")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.cancel.wait(), callee.ring_ms / self.speed / 1000)
        if call.cancel.is_set():
            await self._finish(call, "canceled")
            return
        if isinstance(callee, Unanswered):
            await self._finish(call, callee.status)
            return
        detection = call.first("MachineDetection")
        asynchronous = call.first("AsyncAmd").lower() == "true"
        machine_first = isinstance(callee, Machine) and bool(detection) and not asynchronous
        if detection and not asynchronous:  # synchronous detection: done before the TwiML runs
            call.answered_by = _verdict(callee, detection)
            await self._sleep_ms(callee.beep_end_ms if isinstance(callee, Machine) else callee.human_after_ms)
        call.status, call.start_time = "in-progress", dt.datetime.now(dt.UTC)
        await self._status(call, "in-progress", event="answered")
        twiml = call.first("Twiml") or await self._fetch_twiml(call)
        amd: asyncio.Task[None] | None = None
        if detection and asynchronous:
            amd = asyncio.get_running_loop().create_task(self._detect(call, callee, detection))
        try:
            call.record = await self._run(call, callee, twiml, machine_first)
        finally:
            if amd is not None:
                amd.cancel()
                await asyncio.gather(amd, return_exceptions=True)
        record = call.record
        call.duration_s = math.ceil(record.duration_ms / 1000) if record is not None else 0
        await self._finish(call, "completed")

    async def _run(
        self, call: SimCall, callee: Human | Machine, twiml: str, machine_first: bool
    ) -> CallRecord:
        base = self.server_http_base
        record = CallRecord(call.sid, call.account_sid, "MZ" + secrets.token_hex(16), self.speed)
        if base is None or not twiml:
            call.errors.append("no TwiML to run" if base is not None else "no server_http_base to connect to")
            record.end_reason = "no_stream"
            return record
        limit = call.first("TimeLimit")
        max_ms = int(limit) * 1000 if limit else MAX_TIME_LIMIT_S * 1000
        steps: list[Step]
        end_silence_ms, end_timeout_ms = 1500, 10_000
        if isinstance(callee, Human):
            steps = list(callee.script)
            end_silence_ms, end_timeout_ms = callee.end_silence_ms, callee.end_timeout_ms
        elif machine_first:  # its greeting and beep went by before the detection let the TwiML run
            steps = [HangUp(At(callee.record_ms))]
        else:
            steps = [Say(callee.greeting, At(0)), Say(beep(callee.beep_ms), At(callee.beep_at_ms)),
                     HangUp(At(callee.beep_end_ms + callee.record_ms))]  # fmt: skip
        return await run_twiml(
            record, twiml, server_http_base=base, auth_token=self.auth_token,
            public_url=call.first("Url") or base, to=call.to, from_=call.from_, script=steps,
            direction="outbound-api", max_duration_ms=max_ms, control=call.control,
            end_silence_ms=end_silence_ms, end_timeout_ms=end_timeout_ms,
        )  # fmt: skip

    async def _detect(self, call: SimCall, callee: Human | Machine, detection: str) -> None:
        """Asynchronous answering-machine detection: the verdict at its time on the stream clock."""
        if isinstance(callee, Human):
            at_ms = callee.human_after_ms
        elif detection == "DetectMessageEnd":
            at_ms = callee.beep_end_ms + callee.detected_after_beep_ms
        else:
            at_ms = min(callee.greeting.duration_ms, 1500)
        await call.control.until_stream_ms(at_ms)
        call.answered_by = _verdict(callee, detection)
        url = call.first("AsyncAmdStatusCallback")
        if not url:
            return
        params = {"CallSid": call.sid, "AccountSid": call.account_sid, "AnsweredBy": call.answered_by,
                  "MachineDetectionDuration": str(at_ms)}  # fmt: skip
        await self._callback(call, "amd", url, call.first("AsyncAmdStatusCallbackMethod", "POST"), params)

    async def _fetch_twiml(self, call: SimCall) -> str:
        """A call created with ``Url``: its TwiML is requested there, like a voice webhook."""
        params = self._call_params(call, call.status)
        done = await self._callback(call, "url", call.first("Url"), call.first("Method", "POST"), params)
        return done.body if done.status == 200 else ""

    async def _finish(self, call: SimCall, status: str) -> None:
        call.status = status
        call.end_time = call.updated = dt.datetime.now(dt.UTC)
        extra = {}
        if status == "completed":
            duration = call.duration_s or 0
            extra = {"CallDuration": str(duration), "Duration": str(math.ceil(duration / 60))}
        await self._status(call, status, event="completed", extra=extra)

    def _call_params(self, call: SimCall, status: str) -> dict[str, str]:
        params = {
            "AccountSid": call.account_sid, "ApiVersion": API_VERSION, "CallSid": call.sid,
            "CallStatus": status, "Called": call.to, "Caller": call.from_, "Direction": "outbound-api",
            "From": call.from_, "To": call.to,
        }  # fmt: skip
        if call.answered_by is not None:
            params["AnsweredBy"] = call.answered_by
        return params

    async def _status(self, call: SimCall, status: str, *, event: str, extra: Mapping[str, str] = {}) -> None:
        url = call.first("StatusCallback")
        events = call.params.get("StatusCallbackEvent") or ["completed"]
        if not url or event not in events:
            return
        params = self._call_params(call, status) | dict(extra)
        params |= {"CallbackSource": "call-progress-events", "SequenceNumber": call.next_sequence(),
                   "Timestamp": _rfc2822(dt.datetime.now(dt.UTC))}  # fmt: skip
        await self._callback(call, "status", url, call.first("StatusCallbackMethod", "POST"), params)

    async def _callback(
        self, call: SimCall, kind: Literal["status", "amd", "url"], url: str, method: str,
        params: dict[str, str],
    ) -> Callback:  # fmt: skip
        """A signed request to the application, as Twilio makes it (the URL as given is what is signed)."""
        method = method.upper()
        done = Callback(kind, url, method, params)
        call.callbacks.append(done)
        validator = RequestValidator(self.auth_token)
        if method == "GET":
            signed = url + ("&" if "?" in url else "?") + urlencode(params)
            headers = {"X-Twilio-Signature": validator.compute_signature(signed, {})}
            target, data = self._local(signed, kind), None
        else:
            headers = {"X-Twilio-Signature": validator.compute_signature(url, params)}
            target, data = self._local(url, kind), params
        headers["User-Agent"] = "TwilioProxy/1.1"
        assert self._session is not None
        if target is None:
            call.errors.append(f"{kind} callback to {urlsplit(url).path} not sent: no server_http_base")
            return done
        try:
            async with self._session.request(method, target, data=data, headers=headers) as response:
                done.status, done.body = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            call.errors.append(f"{kind} callback to {urlsplit(url).path} failed: {type(exc).__name__}")
        if done.status and not 200 <= done.status < 300:
            call.errors.append(f"{kind} callback to {urlsplit(url).path} answered HTTP {done.status}")
        return done

    def _local(self, url: str, kind: str = "url") -> str | None:
        """A URL Twilio was given, requested on the local server (same path and query); None without
        one (the simulator never leaves 127.0.0.1)."""
        base = self.callback_http_bases.get(kind, self.server_http_base)
        if base is None:
            return None
        parts = urlsplit(url)
        query = f"?{parts.query}" if parts.query else ""
        return base.rstrip("/") + (parts.path or "/") + query

    async def _sleep_ms(self, ms: float) -> None:
        await asyncio.sleep(ms / self.speed / 1000)

    # --- numbers -----------------------------------------------------------------------------------------

    def _list_numbers(self, request: web.Request) -> Json:
        query = request.query
        wanted, name = query.get("PhoneNumber"), query.get("FriendlyName")
        rows = [
            n.fields for n in self.numbers.values()
            if (not wanted or n.phone_number == wanted) and (not name or n.fields["friendly_name"] == name)
        ]  # fmt: skip
        size = max(1, min(_int(query.get("PageSize"), 50), 1000))
        page = max(0, _int(query.get("Page"), 0))
        chunk = rows[page * size : (page + 1) * size]
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/IncomingPhoneNumbers.json"
        filters = {k: v for k, v in (("PhoneNumber", wanted), ("FriendlyName", name)) if v}

        def uri(n: int) -> str:
            return base + "?" + urlencode({**filters, "PageSize": size, "Page": n})

        more = (page + 1) * size < len(rows)
        return {
            "incoming_phone_numbers": chunk, "end": page * size + max(len(chunk) - 1, 0),
            "first_page_uri": uri(0), "next_page_uri": uri(page + 1) if more else None, "page": page,
            "page_size": size, "previous_page_uri": uri(page - 1) if page else None, "start": page * size,
            "uri": uri(page),
        }  # fmt: skip

    def _update_number(self, number: PhoneNumber, form: MultiDictProxy[Any]) -> Json:
        fields = {
            "VoiceUrl": "voice_url", "VoiceMethod": "voice_method", "VoiceFallbackUrl": "voice_fallback_url",
            "VoiceFallbackMethod": "voice_fallback_method", "StatusCallback": "status_callback",
            "StatusCallbackMethod": "status_callback_method", "FriendlyName": "friendly_name",
        }  # fmt: skip
        changes: dict[str, str] = {}
        for name, value in form.items():
            key = fields.get(name)
            if key is None:
                continue
            text = str(value)
            if name.endswith("Url") or name == "StatusCallback":
                if text and not _is_url(text):
                    raise TwilioError(400, 21502, f"Invalid {name}: {text[:80]}")
            elif name.endswith("Method") and text.upper() not in ("GET", "POST"):
                raise TwilioError(400, 21631, f"Invalid {name}: {text[:20]}")
            changes[key] = text.upper() if name.endswith("Method") else text
        number.fields.update(changes)
        number.fields["date_updated"] = _rfc2822(dt.datetime.now(dt.UTC))
        return number.fields


def _verdict(callee: Human | Machine, detection: str) -> str:
    if isinstance(callee, Human):
        return "human"
    return "machine_end_beep" if detection == "DetectMessageEnd" else "machine_start"


def _error(status: int, code: int, message: str) -> web.Response:
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}  # fmt: skip
    headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if status == 401 else None
    return web.Response(
        text=json.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _is_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _rfc2822(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")


def _formatted(number: str) -> str:
    """``+15551230001`` as Twilio formats a North American number: ``(555) 123-0001``."""
    if number.startswith("+1") and len(number) == 12 and number[1:].isdigit():
        return f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    return number


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default
