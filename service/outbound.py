"""Outbound calls into an agent, and numbers pointed at the service, through Twilio's REST API.

    placement = prepare(settings, agents.book, CallRequest(to, agent="+1555…", params={...}), now_s)
    sid = create_call(twilio_client(settings), settings, placement)   # blocking: a thread from async code
    change = point_number(client, settings, agents.book, "+1555…", agent_key=None, dry_run=True)

An outbound call has no voice webhook: its TwiML goes inline with the create request
(``<Connect action><Stream>``, the same as an inbound call's), so the agent is resolved, its ``{{name}}``
placeholders checked (:mod:`service.core.placeholders`) and the stream token minted before Twilio has
named the call. The token therefore cannot be bound to the CallSid. It is bound to a *nonce* instead
(``outbound:<nonce>``: the same HMAC, expiry and single use as an inbound token, over the agent and a
digest of the call's variables), and the nonce travels as a ``<Parameter>``. A call placed through the
HTTP API (``api.`` nonces) is also bound to its CallSid once Twilio returns it: the service stores
``outbound:<nonce> -> CallSid`` as a decision (shared by the workers through the database) and the
stream's ``start`` must carry that CallSid. A call placed from the command line (``cli.`` nonces) cannot
leave that binding with the service; its token is checked the same way otherwise.

Twilio's errors become one line each (:class:`OutboundError`): the code, Twilio's message without its
generic prefix, and what to do for the usual ones (authentication, unverified caller ID, geographic
permissions).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from requests import RequestException
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from service.agents import DEFAULT_KEY, AgentBook
from service.config import (
    AMD_PATH,
    DEFAULT_TWILIO_API_BASE_URL,
    FALLBACK_PATH,
    STATUS_PATH,
    VOICE_PATH,
    Settings,
)
from service.core.agent import Agent
from service.core.placeholders import check, fill_agent, placeholders_of, to_parameters, token_subject
from service.errors import ServiceError
from service.web.security import mint_stream_token
from service.web.twilio_requests import stream_twiml

__all__ = [
    "OUTBOUND_DIRECTION",
    "CallRequest",
    "NumberChange",
    "OutboundError",
    "Placement",
    "agent_for_stream",
    "create_call",
    "fetch_call",
    "is_bound",
    "list_numbers",
    "outbound_subject",
    "point_number",
    "prepare",
    "twilio_client",
    "twilio_error",
]

log = logging.getLogger(__name__)

OUTBOUND_DIRECTION = "outbound-api"
MAX_INLINE_TWIML_CHARS = 4000
"""Twilio's limit on ``Twiml`` in a create request (error 32018 beyond)."""
RING_ALLOWANCE_S = 120
"""Added to ``STREAM_TOKEN_TTL_S`` for an outbound call: it may queue, then ring for up to a minute."""
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
TWILIO_TIMEOUT_S = 15.0
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_GENERIC_PREFIX = re.compile(r"^Unable to (?:create|fetch|update|delete) record: ")
_HINTS = {
    20003: "check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
    20404: "no such resource in this account",
    21210: "the From number must be a number of this account or a verified caller ID",
    21212: "the From number must be E.164 (+ and digits) and belong to this account",
    21211: "the To number must be a valid E.164 number",
    21215: "enable calls to that country in the Twilio console (Voice > Settings > Geo permissions)",
    32018: "the call's TwiML is too long: shorten the params",
}
_HTTP_LOG = logging.getLogger("service.outbound.http")
"""The twilio package's request log (URLs and headers at INFO): quiet unless asked for."""


class OutboundError(ServiceError):
    """Placing a call or pointing a number failed: ``problems`` holds one line each (no secret, no
    variable's value). ``status`` is the HTTP status the API answers with; ``twilio_code`` Twilio's code."""

    def __init__(self, problems: list[str], *, status: int = 400, twilio_code: int | None = None) -> None:
        self.problems = list(problems)
        self.status = status
        self.twilio_code = twilio_code
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class CallRequest:
    """What the command line and ``POST /calls`` ask for."""

    to: str
    agent: str
    from_: str | None = None
    params: Mapping[str, str] = field(default_factory=dict, repr=False)
    amd: bool = False


@dataclass(frozen=True, slots=True)
class Placement:
    """A checked call, ready for Twilio: the inline TwiML carries the agent, the token and the values."""

    to: str
    from_: str
    agent: Agent
    nonce: str
    twiml: str = field(repr=False)
    amd: bool = False

    @property
    def subject(self) -> str:
        return outbound_subject(self.nonce)

    @property
    def bound(self) -> bool:
        """Whether the service keeps this call's nonce -> CallSid binding (placed through the API)."""
        return self.nonce.startswith("api.")

    def create_kwargs(self, settings: Settings) -> dict[str, Any]:
        """The arguments of ``client.calls.create``."""
        status_url = settings.public_https_url(STATUS_PATH) + "?" + urlencode({"agent": self.agent.key})
        kwargs: dict[str, Any] = {
            "to": self.to,
            "from_": self.from_,
            "twiml": self.twiml,
            "status_callback": status_url,
            "status_callback_method": "POST",
            "status_callback_event": list(STATUS_EVENTS),
        }
        if self.agent.max_call_s is not None:
            kwargs["time_limit"] = self.agent.max_call_s
        if self.amd:
            kwargs.update(
                machine_detection="DetectMessageEnd",
                async_amd="true",
                async_amd_status_callback=settings.public_https_url(AMD_PATH),
                async_amd_status_callback_method="POST",
            )
        return kwargs


def outbound_subject(nonce: str) -> str:
    """What an outbound call's stream token is bound to in place of the CallSid."""
    return f"outbound:{nonce}"


def is_bound(subject: str) -> bool:
    """Whether the service kept the CallSid of this outbound call (placed through the API)."""
    return subject.startswith("outbound:api.")


def agent_for_stream(agent: Agent, values: Mapping[str, str], *, outbound: bool) -> Agent | str:
    """The agent a stream runs: its placeholders filled, and on an outbound call the ``voicemail`` tool
    offered. A string says why not (the agents file changed since the call was placed)."""
    if outbound:
        problems = check(agent, values)
        if problems:
            return f"the call's variables no longer fit the agent: {'; '.join(problems)}"
        return replace(fill_agent(agent, values), voicemail_tool=True)
    if placeholders_of(agent):
        log.warning("agent %s has {{placeholders}}, an inbound call has no values: left empty", agent.key)
    return fill_agent(agent, values)


def prepare(
    settings: Settings, agents: AgentBook, request: CallRequest, now_s: float, *, via: str = "api"
) -> Placement:
    """Check ``request`` (every problem at once) and build its TwiML. ``via``: ``api`` or ``cli``."""
    problems: list[str] = []
    if not _E164.fullmatch(request.to):
        problems.append(f"to: {_show(request.to)} is not an E.164 number (+ and 8 to 15 digits)")
    agent = agents.by_key(request.agent)
    if agent is None:
        known = ", ".join(sorted(([DEFAULT_KEY] if agents.default else []) + list(agents.numbers)))
        problems.append(f"agent: {_show(request.agent)} is not in the agents file (agents: {known or '-'})")
    from_ = request.from_ or (agent.key if agent is not None and _E164.fullmatch(agent.key) else None)
    if from_ is None:
        problems.append("from: required (the agent has no number of its own to call from)")
    elif not _E164.fullmatch(from_):
        problems.append(f"from: {_show(from_)} is not an E.164 number (+ and 8 to 15 digits)")
    if agent is not None:
        problems += check(agent, request.params)
    if problems or agent is None or from_ is None:
        raise OutboundError(problems)
    nonce = f"{via}.{secrets.token_urlsafe(16)}"
    subject = token_subject(agent.key, request.params)
    ttl_s = settings.stream_token_ttl_s + RING_ALLOWANCE_S
    token = mint_stream_token(settings.stream_token_secret, outbound_subject(nonce), subject, now_s, ttl_s)
    parameters = {"agent": agent.key, "token": token, "nonce": nonce, "from": from_, "to": request.to,
                  "direction": OUTBOUND_DIRECTION, **to_parameters(request.params)}  # fmt: skip
    twiml = stream_twiml(settings, parameters.items())
    if len(twiml) > MAX_INLINE_TWIML_CHARS:
        raise OutboundError(
            [f"params: the call's TwiML would be {len(twiml)} characters; Twilio takes at most "
             f"{MAX_INLINE_TWIML_CHARS} inline (shorten the values)"]
        )  # fmt: skip
    return Placement(request.to, from_, agent, nonce, twiml, request.amd)


# --- Twilio ------------------------------------------------------------------------------------------


def twilio_client(settings: Settings, *, timeout_s: float = TWILIO_TIMEOUT_S) -> Client:
    """A twilio ``Client`` for the account, talking to ``TWILIO_API_BASE_URL`` (blocking calls)."""
    if settings.twilio_account_sid is None:
        raise OutboundError(["TWILIO_ACCOUNT_SID: required for Twilio's REST API"], status=503)
    if _HTTP_LOG.level == logging.NOTSET:
        _HTTP_LOG.setLevel(logging.WARNING)
    http = TwilioHttpClient(timeout=timeout_s, logger=_HTTP_LOG)
    client = Client(settings.twilio_account_sid, settings.twilio_auth_token, http_client=http)
    if settings.twilio_api_base_url != DEFAULT_TWILIO_API_BASE_URL:
        client.edge = client.region = None  # TWILIO_EDGE / TWILIO_REGION would rewrite the host
    client.api.base_url = settings.twilio_api_base_url
    return client


def create_call(client: Client, settings: Settings, placement: Placement) -> str:
    """Place the call; its CallSid. ``OutboundError`` for Twilio's refusals and unreachable Twilio."""
    try:
        call = client.calls.create(**placement.create_kwargs(settings))
    except (TwilioException, RequestException) as exc:
        raise twilio_error(exc, settings) from None
    sid = str(call.sid)
    log.info("outbound call %s placed (agent %s, amd %s)", sid, placement.agent.key, placement.amd)
    return sid


def fetch_call(client: Client, settings: Settings, call_sid: str) -> dict[str, Any]:
    """Twilio's view of a call: status, direction, answered_by, duration (``OutboundError`` if none)."""
    try:
        call = client.calls(call_sid).fetch()
    except (TwilioException, RequestException) as exc:
        raise twilio_error(exc, settings) from None
    duration = call.duration
    return {
        "call_sid": call.sid, "status": call.status, "direction": call.direction, "to": call.to,
        "from": call._from, "answered_by": call.answered_by,
        "duration_s": int(duration) if duration not in (None, "") else None,
    }  # fmt: skip


def twilio_error(exc: Exception, settings: Settings) -> OutboundError:
    """A twilio-package or network failure as one line, with a hint for the usual codes."""
    if isinstance(exc, TwilioRestException):
        code = exc.code if isinstance(exc.code, int) else None
        message = _GENERIC_PREFIX.sub("", str(exc.msg)).strip()
        return _twilio_problem(code, message, exc.status)
    if isinstance(exc, RequestException):
        return OutboundError(
            [f"cannot reach Twilio at {settings.twilio_api_base_url} ({type(exc).__name__})"], status=502
        )
    if isinstance(exc, TwilioException):  # a list page that failed: ("Unable to fetch page", response)
        response = exc.args[1] if len(exc.args) > 1 else None
        status = getattr(response, "status_code", 502)
        code, message = _error_body(getattr(response, "text", ""))
        return _twilio_problem(code, message or "Unable to fetch page", status)
    return OutboundError([f"Twilio: {type(exc).__name__}"], status=502)


def _twilio_problem(code: int | None, message: str, http_status: int) -> OutboundError:
    hint = _HINTS.get(code or 0)
    line = f"Twilio error {code if code is not None else http_status}: {message}"
    if hint and hint.lower() not in message.lower():
        line += f" ({hint})"
    return OutboundError([line], status=400 if http_status == 400 else 502, twilio_code=code)


def _error_body(text: str) -> tuple[int | None, str]:
    try:
        body = json.loads(text)
    except ValueError:
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    code = body.get("code")
    return (code if isinstance(code, int) else None), str(body.get("message", ""))


# --- numbers -----------------------------------------------------------------------------------------

POINTED_FIELDS = (
    "voice_url", "voice_method", "voice_fallback_url", "voice_fallback_method", "status_callback",
    "status_callback_method",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class NumberChange:
    """A number's voice settings before and after ``numbers point`` (``applied``: False on a dry run)."""

    sid: str
    phone_number: str
    before: Mapping[str, str]
    after: Mapping[str, str]
    applied: bool

    @property
    def changed(self) -> list[str]:
        return [name for name in POINTED_FIELDS if self.before.get(name, "") != self.after[name]]


def pointing(settings: Settings, agent_key: str | None) -> dict[str, str]:
    """The voice settings that send a number's calls to this service (to ``agent_key`` if given)."""
    voice_url = settings.public_https_url(VOICE_PATH)
    if agent_key is not None:
        voice_url += "?" + urlencode({"agent": agent_key})
    return {
        "voice_url": voice_url, "voice_method": "POST",
        "voice_fallback_url": settings.public_https_url(FALLBACK_PATH), "voice_fallback_method": "POST",
        "status_callback": settings.public_https_url(STATUS_PATH), "status_callback_method": "POST",
    }  # fmt: skip


def list_numbers(client: Client, settings: Settings) -> list[dict[str, str]]:
    """The account's numbers: ``phone_number``, ``sid``, ``friendly_name`` and the pointed fields."""
    try:
        numbers = client.incoming_phone_numbers.list()
    except (TwilioException, RequestException) as exc:
        raise twilio_error(exc, settings) from None
    return [_number_fields(n) for n in numbers]


def point_number(
    client: Client, settings: Settings, agents: AgentBook, number: str, *, agent_key: str | None,
    dry_run: bool,
) -> NumberChange:  # fmt: skip
    """Point ``number`` (of this account) at the service; on a dry run, only say what would change."""
    problems: list[str] = []
    if not _E164.fullmatch(number):
        problems.append(f"{_show(number)} is not an E.164 number (+ and 8 to 15 digits)")
    if agent_key is not None and agents.by_key(agent_key) is None:
        problems.append(f"agent: {_show(agent_key)} is not in the agents file")
    elif agent_key is None and agents.for_number(number) is None:
        problems.append(
            f"no agent answers {number}: add [numbers.\"{number}\"] or [default] to the agents file, "
            "or pass --agent"
        )
    if problems:
        raise OutboundError(problems)
    try:
        found = client.incoming_phone_numbers.list(phone_number=number, limit=1)
    except (TwilioException, RequestException) as exc:
        raise twilio_error(exc, settings) from None
    if not found:
        raise OutboundError(
            [f"{number} is not a number of account {settings.twilio_account_sid} (see: numbers list)"],
            status=404,
        )
    before = _number_fields(found[0])
    after = pointing(settings, agent_key)
    change = NumberChange(before["sid"], before["phone_number"], before, after, applied=False)
    if dry_run or not change.changed:
        return change
    try:
        client.incoming_phone_numbers(change.sid).update(**after)
    except (TwilioException, RequestException) as exc:
        raise twilio_error(exc, settings) from None
    log.info("number %s pointed at the service", change.sid)
    return NumberChange(change.sid, change.phone_number, before, after, applied=True)


def _number_fields(number: Any) -> dict[str, str]:
    fields = {name: str(getattr(number, name, None) or "") for name in POINTED_FIELDS}
    fields.update(sid=str(number.sid), phone_number=str(number.phone_number),
                  friendly_name=str(number.friendly_name or ""))  # fmt: skip
    return fields


def _show(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")
