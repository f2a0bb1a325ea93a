"""The Quart app: health check, the signed Twilio voice webhook that starts a media stream, and the
signed requests Twilio makes once the stream has ended (:mod:`service.web.after_stream`).

    create_app(settings, agents=...)    # tests pass their own; None loads .env + environment
    state_of(app)                       # AppState: settings, agents, seen stream tokens, wall clock

The media-stream WebSocket (``MEDIA_PATH``) is not a Quart route: :mod:`service.web.serving` serves it on
the same port, on a lean path (:mod:`service.web.media`), and relays everything else to this app.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from quart import Quart, Response, request
from twilio.twiml.voice_response import VoiceResponse

from service.agents import Agent, AgentStore
from service.config import (
    ACTION_PATH,
    DEPRECATED_MODELS,
    DIAL_DONE_PATH,
    VOICE_PATH,
    WHISPER_PATH,
    Settings,
    load_settings,
)
from service.errors import ConfigError
from service.logs import bind_call, configure_logging
from service.runtime.metrics import CONTENT_TYPE_LATEST as METRICS_CONTENT_TYPE
from service.web import calls_api
from service.web.after_stream import (
    APOLOGY,
    Urls,
    action_twiml,
    dial_done_twiml,
    whisper_twiml,
)
from service.web.operations import Operations
from service.web.security import (
    mint_stream_token,
)
from service.web.twilio_requests import signed_form, stream_twiml

__all__ = ["APOLOGY", "NOT_IN_SERVICE", "AppState", "build_stream_twiml", "create_app", "state_of"]

logger = logging.getLogger(__name__)

NOT_IN_SERVICE = "Sorry, this number is not in service. Goodbye."
BUSY = "Sorry, all our lines are busy right now. Please call again in a few minutes. Goodbye."
MAX_BODY_BYTES = 64 * 1024  # a voice webhook form is 1-3 KB, SIP headers included
MAX_PARAMETER_CHARS = 500  # <Parameter> name + value must be under this (twilio.md §2)
_STATE_KEY = "dialtone"
_CALL_SID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True, slots=True)
class AppState:
    """What the routes share, stored in ``app.extensions`` (no globals)."""

    settings: Settings
    agents: AgentStore
    clock: Callable[[], float]  # wall clock in epoch seconds: stream tokens carry absolute expiries
    ops: Operations
    """Admission, records, metrics, decisions, stream-token register: this process's operations."""


def state_of(app: Quart) -> AppState:
    state = app.extensions.get(_STATE_KEY)
    if not isinstance(state, AppState):
        raise TypeError("not an app built by service.web.app.create_app")
    return state


def create_app(
    settings: Settings | None = None,
    *,
    agents: AgentStore | None = None,
    clock: Callable[[], float] = time.time,
) -> Quart:
    """Build the app. Without ``settings``, load them (``.env`` + environment) and configure logging."""
    if settings is None:
        settings = load_settings()
        configure_logging(settings.log_level, secrets=secrets_of(settings))
    if agents is None:
        agents = AgentStore(settings.agents_file)
    book = agents.book
    everyone = [agent for agent in (book.default, *book.numbers.values()) if agent is not None]
    if settings.tools_signing_secret is None and any(a.tools or a.post_call_webhook for a in everyone):
        raise ConfigError(
            ["TOOLS_SIGNING_SECRET: required when an agent has tools or a post_call_webhook (it signs them)"],
            source="settings",
        )
    if settings.openai_realtime_model in DEPRECATED_MODELS:
        logger.warning("OPENAI_REALTIME_MODEL %s is deprecated", settings.openai_realtime_model)

    app = Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    state = AppState(settings=settings, agents=agents, clock=clock, ops=Operations(settings))
    app.extensions[_STATE_KEY] = state

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """Ready for new calls: not draining, below capacity, token budget left, records not backed up."""
        problems = state.ops.ready()
        body = json.dumps({"ready": not problems, "problems": problems})
        return Response(body, status=503 if problems else 200, mimetype="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.ops.metrics.exposition(), status=200, content_type=METRICS_CONTENT_TYPE)

    @app.post(VOICE_PATH)
    async def voice() -> Response:
        return await _voice_webhook(state)

    @app.post(ACTION_PATH)
    async def action() -> Response:
        return await _action(state)

    @app.post(DIAL_DONE_PATH)
    async def dial_done() -> Response:
        return await _dial_done(state)

    @app.post(WHISPER_PATH)
    async def whisper() -> Response:
        return await _whisper(state)

    calls_api.register(app, state)  # POST /calls, GET /calls/<sid>, status and AMD callbacks, fallback
    return app


async def _voice_webhook(state: AppState) -> Response:
    settings = state.settings
    form = await signed_form(state.settings, VOICE_PATH, "voice webhook")
    if isinstance(form, Response):
        return form
    call_sid = form.get("CallSid", "")
    to = form.get("To", "")
    if not to:
        logger.warning("voice webhook rejected: To missing")
        return _text("Bad Request: CallSid and To are required\n", 400)

    with bind_call(call_sid):
        key = request.args.get("agent")  # a number pointed at an agent (python -m service numbers point)
        agent = state.agents.by_key(key) if key else state.agents.for_number(to)
        if agent is None:
            logger.warning("no agent for the called number and no [default]; hanging up")
            response = VoiceResponse()
            response.say(NOT_IN_SERVICE)
            response.hangup()
            return _twiml(str(response))
        refusal = await state.ops.admit(call_sid)
        if refusal is not None:
            logger.warning("call refused: %s", refusal)
            return _twiml(busy_twiml(settings.busy_response))
        token = mint_stream_token(
            settings.stream_token_secret, call_sid, agent.key, state.clock(), settings.stream_token_ttl_s
        )
        logger.info("voice webhook: agent %s, starting media stream", agent.key)
        return _twiml(build_stream_twiml(settings, agent, token, caller=form.get("From", ""), called=to))


def busy_twiml(mode: str) -> str:
    """The answer to a call that cannot be taken now: a polite message and a hang-up, or a busy signal."""
    response = VoiceResponse()
    if mode == "reject":
        response.reject(reason="busy")
    else:
        response.say(BUSY)
        response.hangup()
    return str(response)


def _urls(settings: Settings) -> Urls:
    return Urls(settings.public_https_url(DIAL_DONE_PATH), settings.public_https_url(WHISPER_PATH))


async def _action(state: AppState) -> Response:
    """``<Connect action>``: the stream has ended; what the call does next, as the bridge decided."""
    form = await signed_form(state.settings, ACTION_PATH, "stream action")
    if isinstance(form, Response):
        return form
    call_sid = form["CallSid"]
    with bind_call(call_sid):
        decision = await state.ops.take_decision(call_sid)
        if form.get("CallStatus") == "completed":
            logger.info("stream action: the caller has hung up")
            return _twiml(str(VoiceResponse()))
        if decision is None:
            logger.warning("stream action: no decision for this call (unknown or expired): hanging up")
        else:
            logger.info("stream action: %s", decision.get("action"))
            if decision.get("action") == "dial":
                state.ops.put_decision(f"whisper:{call_sid}", {"summary": decision.get("summary", "")})
        return _twiml(action_twiml(decision, state.agents.by_key, _urls(state.settings)))


async def _dial_done(state: AppState) -> Response:
    """A transfer's ``<Dial>`` is over: done if it was answered, else the transfer's fallback."""
    form = await signed_form(state.settings, DIAL_DONE_PATH, "dial action")
    if isinstance(form, Response):
        return form
    call_sid = form["CallSid"]
    status = form.get("DialCallStatus", "")
    agent = state.agents.by_key(request.args.get("agent", ""))
    transfer = agent.transfer(request.args.get("transfer", "")) if agent is not None else None

    def fallback(key: str) -> str | None:
        other = state.agents.by_key(key)
        if other is None:
            return None
        settings = state.settings
        token = mint_stream_token(
            settings.stream_token_secret, call_sid, other.key, state.clock(), settings.stream_token_ttl_s
        )
        caller, called = form.get("From", ""), form.get("To", "")
        return build_stream_twiml(settings, other, token, caller=caller, called=called)

    with bind_call(call_sid):
        logger.info("transfer dial ended: %s", status or "unknown")
        return _twiml(dial_done_twiml(status, transfer, fallback))


async def _whisper(state: AppState) -> Response:
    """Said to whoever answers a transfer: the configured whisper and the agent's summary."""
    form = await signed_form(state.settings, WHISPER_PATH, "transfer whisper")
    if isinstance(form, Response):
        return form
    agent = state.agents.by_key(request.args.get("agent", ""))
    transfer = agent.transfer(request.args.get("transfer", "")) if agent is not None else None
    stored = await state.ops.take_decision(f"whisper:{form.get('ParentCallSid', '')}")
    summary = str(stored.get("summary", "")) if stored is not None else None
    return _twiml(whisper_twiml(transfer, summary))


def build_stream_twiml(settings: Settings, agent: Agent, token: str, *, caller: str, called: str) -> str:
    """An inbound call's stream TwiML: agent, token, from and to as ``<Parameter>``\\ s (one too long for
    Twilio is left out, with a note: a SIP ``From`` can be)."""
    parameters = []
    for name, value in (("agent", agent.key), ("token", token), ("from", caller), ("to", called)):
        if len(name) + len(value) < MAX_PARAMETER_CHARS:
            parameters.append((name, value))
        else:
            logger.info("stream parameter %s left out: longer than Twilio allows", name)
    return stream_twiml(settings, parameters)


def _twiml(xml: str) -> Response:
    return Response(xml, status=200, mimetype="text/xml")


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def secrets_of(settings: Settings) -> list[str]:
    secrets = [settings.openai_api_key, settings.twilio_auth_token, settings.dialtone_api_key or ""]
    with contextlib.suppress(UnicodeDecodeError):  # a derived (binary) secret cannot appear in text
        secrets.append(settings.stream_token_secret.decode("utf-8"))
    return secrets
