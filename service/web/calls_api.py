"""The calls API, and the requests Twilio makes about calls: status callbacks, answering machines.

``create_app`` registers these routes (``register(app, state)``)::

    POST /calls            Authorization: Bearer $DIALTONE_API_KEY (compared in constant time)
                           {"to": "+1…", "agent": "KEY", "from": "+1…", "params": {...}, "amd": false}
                           -> 201 {"call_sid": "CA…", "status": "queued"}; 400 with every problem, 401,
                           502 when Twilio refuses (its code and message), 503 when the API is off or
                           the service takes no new calls
    GET  /calls/{sid}      -> 200 {"call_sid", "status", "to", "from", "agent", "direction",
                           "answered_by", "duration_s", "source"}; what the status callbacks said, else
                           what Twilio says (``source``: ``callbacks`` | ``twilio``); 404 if neither knows
    POST /twilio/status    call status callbacks (signed): the API's status; an outbound call that was
                           never answered (busy, no-answer, failed, canceled) leaves a call record
    POST /twilio/amd       the asynchronous answering-machine verdict (signed): handed to the live call
                           as :class:`~service.core.inputs.MachineDetected` if it runs in this process
    POST /twilio/fallback  a number's voice fallback URL: the apology, then ``<Hangup/>``

Status callbacks may arrive out of order: a callback with a lower ``SequenceNumber`` than the last one
applied does not change the status. The statuses are kept in this process (the latest
:data:`MAX_STATUSES` calls); another worker's calls are looked up at Twilio.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, request
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse
from werkzeug.datastructures import MultiDict

from service.config import AMD_PATH, CALLS_PATH, FALLBACK_PATH, STATUS_PATH, Settings
from service.core.record import CallRecord
from service.logs import bind_call
from service.outbound import (
    OUTBOUND_DIRECTION,
    CallRequest,
    OutboundError,
    create_call,
    fetch_call,
    prepare,
    twilio_client,
)
from service.web.after_stream import APOLOGY
from service.web.twilio_requests import signed_form
from service.wire import realtime

if TYPE_CHECKING:
    from service.web.app import AppState

__all__ = ["ANSWERED_BY", "CallStatus", "CallStatuses", "register", "statuses_of"]

log = logging.getLogger(__name__)

MAX_STATUSES = 10_000
ANSWERED_BY = frozenset({
    "human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax",
    "unknown",
})  # fmt: skip
NEVER_ANSWERED = frozenset({"busy", "no-answer", "failed", "canceled"})
_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
_SID_CHARS = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BODY_FIELDS = frozenset({"to", "from", "agent", "params", "amd"})
_EXTENSION_KEY = "dialtone.calls"


@dataclass(slots=True)
class CallStatus:
    """What is known of one call from its status callbacks (and its placement, if placed here)."""

    call_sid: str
    status: str
    to: str = ""
    from_: str = ""
    agent: str | None = None
    direction: str = ""
    sequence: int = -1
    answered_by: str | None = None
    duration_s: int | None = None
    updated_s: float = 0.0
    recorded: bool = False
    """A call record was written for it here (an outbound call never answered)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid, "status": self.status, "to": self.to, "from": self.from_,
            "agent": self.agent, "direction": self.direction, "answered_by": self.answered_by,
            "duration_s": self.duration_s, "source": "callbacks",
        }  # fmt: skip


class CallStatuses:
    """The latest calls' statuses in this process, oldest forgotten first."""

    def __init__(self, max_entries: int = MAX_STATUSES) -> None:
        self.max_entries = max_entries
        self._calls: OrderedDict[str, CallStatus] = OrderedDict()

    def get(self, call_sid: str) -> CallStatus | None:
        return self._calls.get(call_sid)

    def _entry(self, call_sid: str) -> CallStatus:
        entry = self._calls.get(call_sid)
        if entry is None:
            entry = self._calls[call_sid] = CallStatus(call_sid, "queued")
            while len(self._calls) > self.max_entries:
                self._calls.popitem(last=False)
        return entry

    def placed(self, call_sid: str, *, to: str, from_: str, agent: str, now_s: float) -> CallStatus:
        entry = self._entry(call_sid)
        entry.to, entry.from_, entry.agent, entry.direction = to, from_, agent, OUTBOUND_DIRECTION
        entry.updated_s = now_s
        return entry

    def callback(self, form: MultiDict[str, str], agent: str | None, now_s: float) -> CallStatus:
        """A status callback: applied unless an earlier-sent one (lower ``SequenceNumber``) came late."""
        entry = self._entry(form["CallSid"])
        entry.to, entry.from_ = form.get("To", entry.to), form.get("From", entry.from_)
        entry.direction = form.get("Direction", entry.direction)
        entry.agent = entry.agent or agent
        if form.get("AnsweredBy"):
            entry.answered_by = form["AnsweredBy"]
        sequence = _int(form.get("SequenceNumber"))
        if sequence is None or sequence > entry.sequence:
            entry.sequence = sequence if sequence is not None else entry.sequence
            entry.status = form.get("CallStatus", entry.status)
            duration = _int(form.get("CallDuration"))
            entry.duration_s = duration if duration is not None else entry.duration_s
            entry.updated_s = now_s
        return entry

    def answered(self, call_sid: str, answered_by: str, now_s: float) -> None:
        entry = self._entry(call_sid)
        entry.answered_by = answered_by
        entry.updated_s = now_s


def statuses_of(app: Quart) -> CallStatuses:
    statuses = app.extensions.get(_EXTENSION_KEY)
    if not isinstance(statuses, CallStatuses):
        raise TypeError("the calls API is not registered on this app")
    return statuses


def register(app: Quart, state: AppState) -> None:
    """Add the calls API and the call callbacks to ``app``."""
    statuses = CallStatuses()
    app.extensions[_EXTENSION_KEY] = statuses
    clients: list[Client] = []

    def client() -> Client:
        if not clients:
            clients.append(twilio_client(state.settings))
        return clients[0]

    @app.post(CALLS_PATH)
    async def place() -> Response:
        refused = _check_key(state.settings)
        if refused is not None:
            return refused
        body = await request.get_json(force=True, silent=True)
        call, problems = _call_request(body)
        if call is None:
            return _json({"error": "; ".join(problems), "problems": problems}, 400)
        try:
            placement = prepare(state.settings, state.agents.book, call, state.clock(), via="api")
        except OutboundError as exc:
            return _error(exc)
        refusal = await state.ops.admit(placement.subject)
        if refusal is not None:
            return _json({"error": f"the service takes no new calls now ({refusal})"}, 503)
        try:
            call_sid = await asyncio.to_thread(create_call, client(), state.settings, placement)
        except OutboundError as exc:
            log.warning("outbound call not placed: Twilio error %s", exc.twilio_code)
            return _error(exc)
        state.ops.put_decision(placement.subject, {"call_sid": call_sid})  # checked at the stream's start
        statuses.placed(call_sid, to=placement.to, from_=placement.from_, agent=placement.agent.key,
                        now_s=time.time())  # fmt: skip
        return _json({"call_sid": call_sid, "status": "queued"}, 201)

    @app.get(CALLS_PATH + "/<call_sid>")
    async def status(call_sid: str) -> Response:
        refused = _check_key(state.settings)
        if refused is not None:
            return refused
        if not _CALL_SID.fullmatch(call_sid):
            return _json({"error": "not a CallSid (CA and 32 hex digits)"}, 400)
        known = statuses.get(call_sid)
        if known is not None:
            return _json(known.as_json(), 200)
        try:
            found = await asyncio.to_thread(fetch_call, client(), state.settings, call_sid)
        except OutboundError as exc:
            if exc.twilio_code == 20404:
                return _json({"error": f"no call {call_sid}"}, 404)
            return _error(exc)
        return _json({**found, "agent": None, "source": "twilio"}, 200)

    @app.post(STATUS_PATH)
    async def status_callback() -> Response:
        form = await signed_form(state.settings, STATUS_PATH, "status callback")
        if isinstance(form, Response):
            return form
        agent = request.args.get("agent")
        with bind_call(form["CallSid"]):
            entry = statuses.callback(form, agent, time.time())
            log.info("call status %s (#%s)", form.get("CallStatus", "?"), form.get("SequenceNumber", "-"))
            if entry.status in NEVER_ANSWERED and entry.direction.startswith("outbound") and entry.agent:
                _record_unanswered(state, entry)
        return Response("", 204)

    @app.post(AMD_PATH)
    async def amd_callback() -> Response:
        form = await signed_form(state.settings, AMD_PATH, "answering-machine callback")
        if isinstance(form, Response):
            return form
        call_sid = form["CallSid"]
        answered_by = form.get("AnsweredBy", "unknown")
        if answered_by not in ANSWERED_BY:
            answered_by = "unknown"
        with bind_call(call_sid):
            statuses.answered(call_sid, answered_by, time.time())
            if not state.ops.machine_verdict(call_sid, answered_by):
                log.info("answered by %s: kept for the process the call is on", answered_by)
        return Response("", 204)

    @app.post(FALLBACK_PATH)
    async def fallback() -> Response:
        """The number's voice webhook failed: nothing is known of the call, only the apology is said."""
        response = VoiceResponse()
        response.say(APOLOGY)
        response.hangup()
        return Response(str(response), status=200, mimetype="text/xml")


def _record_unanswered(state: AppState, entry: CallStatus) -> None:
    """An outbound call that never reached its agent still leaves a call record (once)."""
    store = state.ops.store
    if store is None or entry.recorded:
        return
    entry.recorded = True
    agent = state.agents.by_key(entry.agent or "")
    model = (agent.model if agent is not None else None) or state.settings.openai_realtime_model
    now_s = time.time()
    record = CallRecord(
        call_sid=entry.call_sid, direction=entry.direction, caller=entry.from_, called=entry.to,
        agent=entry.agent, model=model, duration_s=0.0, end_reason=f"not answered ({entry.status})",
        transcript=(), timeline=(), tool_calls=(), barge_ins=0, reconnect_ms=(), rollovers=0,
        first_audio_ms=(), usage=realtime.Usage(), transcription_seconds=0.0, transcription_tokens=0,
        summary={"call_sid": entry.call_sid, "agent": entry.agent, "end_reason": entry.status},
    )  # fmt: skip
    store.put(record, now_s, now_s, transcription_model=None)


def _call_request(body: Any) -> tuple[CallRequest | None, list[str]]:
    """``POST /calls``'s body as a request, or every problem with it."""
    if not isinstance(body, dict):
        return None, ["the body must be a JSON object: {\"to\", \"agent\", \"from\", \"params\", \"amd\"}"]
    problems = [f"{name}: unknown field" for name in sorted(set(body) - _BODY_FIELDS)][:10]
    to, agent, from_ = body.get("to"), body.get("agent"), body.get("from")
    params, amd = body.get("params", {}), body.get("amd", False)
    for name, value in (("to", to), ("agent", agent)):
        if not isinstance(value, str) or not value:
            problems.append(f"{name}: required (a string)")
    if from_ is not None and not isinstance(from_, str):
        problems.append("from: must be a string")
    if params is None:
        params = {}
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        problems.append("params: must be an object of strings")
    if not isinstance(amd, bool):
        problems.append("amd: must be true or false")
    if problems or not isinstance(to, str) or not isinstance(agent, str):
        return None, problems
    return CallRequest(to=to, agent=agent, from_=from_ or None, params=params, amd=amd), []


def _check_key(settings: Settings) -> Response | None:
    """None when the request carries the API key; else the answer (401, or 503 when the API is off)."""
    key = settings.dialtone_api_key
    if key is None:
        return _json({"error": "the calls API is off: set DIALTONE_API_KEY"}, 503)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        log.warning("calls API: %s API key", "wrong" if given else "missing")
        response = _json({"error": "missing or wrong API key (Authorization: Bearer <key>)"}, 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="dialtone"'
        return response
    return None


def _error(exc: OutboundError) -> Response:
    body: dict[str, Any] = {"error": str(exc), "problems": exc.problems}
    if exc.twilio_code is not None:
        body["twilio_code"] = exc.twilio_code
    return _json(body, exc.status)


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
