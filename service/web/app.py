"""The Quart app: health check and the signed Twilio voice webhook that starts a media stream.

    create_app(settings, agents=...)    # tests pass their own; None loads .env + environment
    state_of(app)                       # AppState: settings, agents, seen stream tokens, wall clock

The media-stream WebSocket (``MEDIA_PATH``) is not a Quart route: :mod:`service.web.serving` serves it on
the same port, on a lean path (:mod:`service.web.media`), and relays everything else to this app.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from quart import Quart, Response, request
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from service.agents import Agent, AgentStore
from service.config import DEPRECATED_MODELS, MEDIA_PATH, VOICE_PATH, Settings, load_settings
from service.logs import bind_call, configure_logging
from service.web.security import (
    SIGNATURE_HEADER,
    SeenTokens,
    mint_stream_token,
    validate_twilio_signature,
)

__all__ = ["APOLOGY", "NOT_IN_SERVICE", "AppState", "build_stream_twiml", "create_app", "state_of"]

logger = logging.getLogger(__name__)

APOLOGY = "Sorry, the assistant is unavailable right now. Goodbye."
NOT_IN_SERVICE = "Sorry, this number is not in service. Goodbye."
MAX_BODY_BYTES = 64 * 1024  # a voice webhook form is 1-3 KB, SIP headers included
MAX_PARAMETER_CHARS = 500  # <Parameter> name + value must be under this (twilio.md §2)
_STATE_KEY = "dialtone"
_CALL_SID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True, slots=True)
class AppState:
    """What the routes share, stored in ``app.extensions`` (no globals)."""

    settings: Settings
    agents: AgentStore
    seen_tokens: SeenTokens
    clock: Callable[[], float]  # wall clock in epoch seconds: stream tokens carry absolute expiries


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
    if settings.openai_realtime_model in DEPRECATED_MODELS:
        logger.warning("OPENAI_REALTIME_MODEL %s is deprecated", settings.openai_realtime_model)

    app = Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    state = AppState(settings=settings, agents=agents, seen_tokens=SeenTokens(), clock=clock)
    app.extensions[_STATE_KEY] = state

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(VOICE_PATH)
    async def voice() -> Response:
        return await _voice_webhook(state)

    return app


async def _voice_webhook(state: AppState) -> Response:
    settings = state.settings
    form = await request.form
    url = settings.public_https_url(VOICE_PATH)
    if request.query_string:
        url += "?" + request.query_string.decode("latin-1")
    signature = request.headers.get(SIGNATURE_HEADER)
    if not validate_twilio_signature(settings.twilio_auth_token, url, form, signature):
        logger.warning("voice webhook rejected: %s X-Twilio-Signature", "invalid" if signature else "missing")
        return _text("Forbidden\n", 403)
    account_sid = form.get("AccountSid")
    if settings.twilio_account_sid and account_sid and account_sid != settings.twilio_account_sid:
        logger.warning("voice webhook rejected: AccountSid is not TWILIO_ACCOUNT_SID")
        return _text("Forbidden\n", 403)

    call_sid = form.get("CallSid", "")
    to = form.get("To", "")
    if not call_sid or len(call_sid) > 64 or not set(call_sid) <= _CALL_SID_CHARS or not to:
        logger.warning("voice webhook rejected: CallSid or To missing or invalid")
        return _text("Bad Request: CallSid and To are required\n", 400)

    with bind_call(call_sid):
        agent = state.agents.for_number(to)
        if agent is None:
            logger.warning("no agent for the called number and no [default]; hanging up")
            response = VoiceResponse()
            response.say(NOT_IN_SERVICE)
            response.hangup()
            return _twiml(str(response))
        token = mint_stream_token(
            settings.stream_token_secret, call_sid, agent.key, state.clock(), settings.stream_token_ttl_s
        )
        logger.info("voice webhook: agent %s, starting media stream", agent.key)
        return _twiml(build_stream_twiml(settings, agent, token, caller=form.get("From", ""), called=to))


def build_stream_twiml(settings: Settings, agent: Agent, token: str, *, caller: str, called: str) -> str:
    """``<Connect><Stream>`` with agent/token/from/to parameters, then an apology and ``<Hangup/>``.

    The verbs after ``</Connect>`` run only when our server closes the stream socket.
    """
    stream = Stream(url=settings.public_wss_url(MEDIA_PATH))
    for name, value in (("agent", agent.key), ("token", token), ("from", caller), ("to", called)):
        if len(name) + len(value) < MAX_PARAMETER_CHARS:
            stream.parameter(name=name, value=value)
        else:
            logger.info("stream parameter %s left out: longer than Twilio allows", name)
    connect = Connect()
    connect.append(stream)
    response = VoiceResponse()
    response.append(connect)
    response.say(APOLOGY)
    response.hangup()
    return str(response)


def _twiml(xml: str) -> Response:
    return Response(xml, status=200, mimetype="text/xml")


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def secrets_of(settings: Settings) -> list[str]:
    secrets = [settings.openai_api_key, settings.twilio_auth_token]
    with contextlib.suppress(UnicodeDecodeError):  # a derived (binary) secret cannot appear in text
        secrets.append(settings.stream_token_secret.decode("utf-8"))
    return secrets
