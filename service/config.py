"""Service settings, read once from the environment (and ``.env``).

``Settings.from_env(mapping)`` is pure: it checks every variable and raises one ``ConfigError`` that lists
every problem at once. Messages name the variable, never the value of a secret.

    OPENAI_API_KEY          required (secret)
    OPENAI_REALTIME_URL     ws:// or wss://, default wss://api.openai.com/v1/realtime (model added as ?model=)
    OPENAI_REALTIME_MODEL   default gpt-realtime-2.1 (Azure: the deployment name)
    OPENAI_API_BASE_URL     default https://api.openai.com/v1: the REST API of the post-call analysis
                            (``POST {base}/responses``, the agents' ``analysis`` tables); a simulator or
                            any compatible endpoint may stand in (Azure: https://<resource>.openai.azure.com/openai/v1)
    TWILIO_ACCOUNT_SID      optional, AC + 32 hex
    TWILIO_AUTH_TOKEN       required (secret); signs Twilio's webhooks
    PUBLIC_BASE_URL         required, https://host[:port][/prefix], the URL Twilio reaches us at
    AGENTS_FILE             default agents.toml
    PORT                    default 8080
    WORKERS                 default 1: server processes sharing the port (SO_REUSEPORT), one per core
    LOG_LEVEL               default INFO
    STREAM_TOKEN_SECRET     optional (secret, >= 16 chars); else derived from TWILIO_AUTH_TOKEN
    STREAM_TOKEN_TTL_S      default 300: how long after the webhook a media stream may start
    STREAM_SIGNATURE        require (default) | allow-missing: a media upgrade without X-Twilio-Signature
    RECORD_CALLS_DIR        optional: write each call as JSONL there
    LOG_PAYLOADS            default false
    TRUNCATE_SLACK_MS       default 0: added to what the caller heard when truncating on barge-in
    MODEL_CONNECT_TIMEOUT_S default 5: one attempt to open the model socket
    MODEL_RECONNECT_GIVE_UP_S  default 10: stop reopening a lost model socket after this long
    ROLLOVER_MARGIN_S       default 300: replace a model session this long before its 60-minute limit
    CONTEXT_REPLAY_TOKENS   default 4000: conversation replayed to a replacement session, at most
    QUIET_BATCH_MS          default 100: quiet caller audio may wait this long to go in one append (0: off)
    TOOLS_SIGNING_SECRET    secret (>= 16 chars) signing requests to the agents' HTTP tools and the post-call
                            webhooks; required when an agent has tools or a webhook is set
    DATABASE_URL            default sqlite:///dialtone.db: call records and the state workers share
                            (postgresql://user:password@host/db for several instances)
    TWILIO_PRICE_PER_MINUTE optional: Twilio's price per minute (USD), a separate line of each call's cost
    TRANSCRIPTION_PRICES    optional: MODEL=USD/1M or MODEL=USD/min, comma-separated
    MAX_CALLS               default 100: live calls per instance (all its workers); 0: no limit
    BUSY_RESPONSE           say (default: a polite message, then hang up) | reject (<Reject reason="busy"/>)
    MIN_TOKENS_REMAINING    default 5000: refuse new calls while OpenAI's token budget is below this (0: off)
    DRAIN_TIMEOUT_S         default 60: on SIGTERM, live calls may go on this long before they are ended
    POST_CALL_WEBHOOK_URL   optional: every call's record is POSTed there (signed); agents may set their own
    TWILIO_API_BASE_URL     default https://api.twilio.com: Twilio's REST API (outbound calls, numbers); a
                            simulator or any Twilio-compatible endpoint may stand in
    DIALTONE_API_KEY        optional secret (>= 16 chars): the bearer key of POST /calls and GET /calls/{sid}
                            (unset: that API is off); needs TWILIO_ACCOUNT_SID
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dotenv import dotenv_values

from service.core.call import CallConfig
from service.core.links import RolloverPolicy
from service.core.reconnect import ReconnectPolicy
from service.errors import ConfigError
from service.records.db import DEFAULT_URL, parse_url
from service.records.errors import RecordsConfigError
from service.records.pricing import Pricing, pricing_from_env

__all__ = [
    "ACTION_PATH",
    "AMD_PATH",
    "CALLS_PATH",
    "DEFAULT_OPENAI_API_BASE_URL",
    "DEFAULT_REALTIME_MODEL",
    "DEFAULT_REALTIME_URL",
    "DEFAULT_TWILIO_API_BASE_URL",
    "DEPRECATED_MODELS",
    "DIAL_DONE_PATH",
    "FALLBACK_PATH",
    "MEDIA_PATH",
    "STATUS_PATH",
    "VOICE_PATH",
    "WHISPER_PATH",
    "Settings",
    "StreamSignature",
    "load_settings",
]

VOICE_PATH = "/twilio/voice"
MEDIA_PATH = "/twilio/media"
ACTION_PATH = "/twilio/action"
"""``<Connect action>``: Twilio asks here what to do once the stream has ended."""
DIAL_DONE_PATH = "/twilio/dial-done"
"""``<Dial action>`` of a transfer: what to do when the dial is over (nobody answered: the fallback)."""
WHISPER_PATH = "/twilio/whisper"
"""``<Number url>`` of a transfer: said to whoever answers before the caller is connected."""
STATUS_PATH = "/twilio/status"
"""Call status callbacks (outbound calls, and the numbers pointed with ``python -m service numbers``)."""
AMD_PATH = "/twilio/amd"
"""The asynchronous answering-machine detection callback of an outbound call."""
FALLBACK_PATH = "/twilio/fallback"
"""A number's voice fallback URL: an apology when the voice webhook failed."""
CALLS_PATH = "/calls"
"""The HTTP API: ``POST /calls`` places an outbound call, ``GET /calls/{sid}`` tells its status."""
DEFAULT_TWILIO_API_BASE_URL = "https://api.twilio.com"
DEFAULT_OPENAI_API_BASE_URL = "https://api.openai.com/v1"

DEFAULT_REALTIME_URL = "wss://api.openai.com/v1/realtime"
DEFAULT_REALTIME_MODEL = "gpt-realtime-2.1"
# Shutdown announced for 2027-01-20 (openai SDK, realtime_session_create_request.py).
DEPRECATED_MODELS = frozenset(
    {
        "gpt-realtime",
        "gpt-realtime-2025-08-28",
        "gpt-realtime-mini",
        "gpt-realtime-mini-2025-12-15",
        "gpt-audio-mini",
        "gpt-audio-mini-2025-12-15",
    }
)

StreamSignature = Literal["require", "allow-missing"]
_STREAM_SIGNATURES: tuple[StreamSignature, ...] = ("require", "allow-missing")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_TOKEN_SECRET_LABEL = b"dialtone/stream-token/v1"
_MIN_TOKEN_SECRET_CHARS = 16
_MAX_TOKEN_TTL_S = 3600


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated settings. Build with ``from_env``; secrets are kept out of ``repr``."""

    openai_api_key: str = field(repr=False)
    twilio_auth_token: str = field(repr=False)
    public_base_url: str
    stream_token_secret: bytes = field(repr=False)
    openai_realtime_url: str = DEFAULT_REALTIME_URL
    openai_realtime_model: str = DEFAULT_REALTIME_MODEL
    twilio_account_sid: str | None = None
    agents_file: Path = Path("agents.toml")
    port: int = 8080
    workers: int = 1
    log_level: str = "INFO"
    stream_token_ttl_s: int = 300
    stream_signature: StreamSignature = "require"
    record_calls_dir: Path | None = None
    log_payloads: bool = False
    truncate_slack_ms: int = 0
    model_connect_timeout_s: float = 5.0
    model_reconnect_give_up_s: float = 10.0
    rollover_margin_s: float = 300.0
    context_replay_tokens: int = 4_000
    quiet_batch_ms: int = 100
    tools_signing_secret: bytes | None = field(default=None, repr=False)
    database_url: str = field(default=DEFAULT_URL, repr=False)  # may hold a password
    pricing: Pricing = field(default_factory=Pricing)
    max_calls: int = 100
    busy_response: Literal["say", "reject"] = "say"
    min_tokens_remaining: int = 5_000
    drain_timeout_s: float = 60.0
    post_call_webhook_url: str | None = None
    twilio_api_base_url: str = DEFAULT_TWILIO_API_BASE_URL
    dialtone_api_key: str | None = field(default=None, repr=False)
    openai_api_base_url: str = DEFAULT_OPENAI_API_BASE_URL

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read and check every variable; raise ``ConfigError`` naming all the bad ones."""
        problems: list[str] = []

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None:
                return None
            value = value.strip()
            return value or None

        def required(name: str) -> str:
            value = get(name)
            if value is None:
                problems.append(f"{name}: required")
                return ""
            return value

        api_key = required("OPENAI_API_KEY")
        auth_token = required("TWILIO_AUTH_TOKEN")

        public_base_url = get("PUBLIC_BASE_URL")
        if public_base_url is None:
            problems.append("PUBLIC_BASE_URL: required (the https:// URL Twilio reaches this service at)")
            public_base_url = ""
        else:
            problem = _public_base_url_problem(public_base_url)
            if problem:
                problems.append(f"PUBLIC_BASE_URL: {problem}")
            public_base_url = public_base_url.rstrip("/")

        realtime_url = get("OPENAI_REALTIME_URL") or DEFAULT_REALTIME_URL
        problem = _realtime_url_problem(realtime_url)
        if problem:
            problems.append(f"OPENAI_REALTIME_URL: {problem}")

        model = get("OPENAI_REALTIME_MODEL") or DEFAULT_REALTIME_MODEL
        if not _MODEL.fullmatch(model):
            problems.append(
                "OPENAI_REALTIME_MODEL: must be a model or deployment name (letters, digits, ._:-)"
            )

        account_sid = get("TWILIO_ACCOUNT_SID")
        if account_sid is not None and not _ACCOUNT_SID.fullmatch(account_sid):
            problems.append("TWILIO_ACCOUNT_SID: must be AC followed by 32 hex digits")

        agents_file = Path(get("AGENTS_FILE") or "agents.toml")
        port = _int_in(get("PORT"), "PORT", 8080, 1, 65535, problems)
        workers = _int_in(get("WORKERS"), "WORKERS", 1, 1, 64, problems)
        ttl_s = _int_in(get("STREAM_TOKEN_TTL_S"), "STREAM_TOKEN_TTL_S", 300, 10, _MAX_TOKEN_TTL_S, problems)

        log_level = (get("LOG_LEVEL") or "INFO").upper()
        if log_level not in _LOG_LEVELS:
            problems.append(f"LOG_LEVEL: must be one of {', '.join(_LOG_LEVELS)} (got {_show(log_level)})")
            log_level = "INFO"

        signature_mode: StreamSignature = "require"
        raw_mode = (get("STREAM_SIGNATURE") or "require").lower()
        for mode in _STREAM_SIGNATURES:
            if raw_mode == mode:
                signature_mode = mode
                break
        else:
            problems.append(f"STREAM_SIGNATURE: must be require or allow-missing (got {_show(raw_mode)})")

        raw_secret = get("STREAM_TOKEN_SECRET")
        if raw_secret is not None:
            if len(raw_secret) < _MIN_TOKEN_SECRET_CHARS:
                problems.append(f"STREAM_TOKEN_SECRET: must be at least {_MIN_TOKEN_SECRET_CHARS} characters")
            secret = raw_secret.encode("utf-8")
        else:
            secret = derive_stream_token_secret(auth_token)

        raw_tools_secret = get("TOOLS_SIGNING_SECRET")
        if raw_tools_secret is not None and len(raw_tools_secret) < _MIN_TOKEN_SECRET_CHARS:
            problems.append(f"TOOLS_SIGNING_SECRET: must be at least {_MIN_TOKEN_SECRET_CHARS} characters")

        database_url = get("DATABASE_URL") or DEFAULT_URL
        try:
            parse_url(database_url)
            pricing = pricing_from_env(env)
        except RecordsConfigError as exc:
            problems.append(str(exc))
            pricing = Pricing()
        max_calls = _int_in(get("MAX_CALLS"), "MAX_CALLS", 100, 0, 100_000, problems)
        busy = (get("BUSY_RESPONSE") or "say").lower()
        if busy not in ("say", "reject"):
            problems.append(f"BUSY_RESPONSE: must be say or reject (got {_show(busy)})")
            busy = "say"
        min_tokens = _int_in(
            get("MIN_TOKENS_REMAINING"), "MIN_TOKENS_REMAINING", 5_000, 0, 10_000_000, problems
        )
        drain_s = _float_in(get("DRAIN_TIMEOUT_S"), "DRAIN_TIMEOUT_S", 60.0, 0.0, 3600.0, problems)
        webhook_url = get("POST_CALL_WEBHOOK_URL")
        if webhook_url is not None and urlsplit(webhook_url).scheme not in ("http", "https"):
            problems.append("POST_CALL_WEBHOOK_URL: must be an http:// or https:// URL")
        if webhook_url is not None and raw_tools_secret is None:
            problems.append("TOOLS_SIGNING_SECRET: required with POST_CALL_WEBHOOK_URL (it signs webhooks)")

        twilio_api = (get("TWILIO_API_BASE_URL") or DEFAULT_TWILIO_API_BASE_URL).rstrip("/")
        api_parts = urlsplit(twilio_api)
        if api_parts.scheme not in ("http", "https") or not api_parts.hostname or api_parts.query:
            problems.append("TWILIO_API_BASE_URL: must be an http:// or https:// URL without a query string")
        openai_api = (get("OPENAI_API_BASE_URL") or DEFAULT_OPENAI_API_BASE_URL).rstrip("/")
        openai_parts = urlsplit(openai_api)
        if (
            openai_parts.scheme not in ("http", "https")
            or not openai_parts.hostname
            or openai_parts.query
            or openai_parts.fragment
            or openai_parts.username is not None
        ):
            problems.append(
                "OPENAI_API_BASE_URL: must be an http:// or https:// URL (e.g. https://api.openai.com/v1) "
                "without user info, query string or fragment"
            )
        dialtone_key = get("DIALTONE_API_KEY")
        if dialtone_key is not None and len(dialtone_key) < _MIN_TOKEN_SECRET_CHARS:
            problems.append(f"DIALTONE_API_KEY: must be at least {_MIN_TOKEN_SECRET_CHARS} characters")
        if dialtone_key is not None and account_sid is None:
            problems.append("TWILIO_ACCOUNT_SID: required with DIALTONE_API_KEY (outbound calls use it)")

        record_dir = get("RECORD_CALLS_DIR")
        slack_ms = _int_in(get("TRUNCATE_SLACK_MS"), "TRUNCATE_SLACK_MS", 0, 0, 200, problems)
        log_payloads = _bool(get("LOG_PAYLOADS"), "LOG_PAYLOADS", problems)
        connect_timeout_s = _float_in(
            get("MODEL_CONNECT_TIMEOUT_S"), "MODEL_CONNECT_TIMEOUT_S", 5.0, 0.5, 60.0, problems
        )
        give_up_s = _float_in(
            get("MODEL_RECONNECT_GIVE_UP_S"), "MODEL_RECONNECT_GIVE_UP_S", 10.0, 0.0, 120.0, problems
        )
        margin_s = _float_in(get("ROLLOVER_MARGIN_S"), "ROLLOVER_MARGIN_S", 300.0, 1.0, 1800.0, problems)
        quiet_batch_ms = _int_in(get("QUIET_BATCH_MS"), "QUIET_BATCH_MS", 100, 0, 200, problems)
        context_tokens = _int_in(
            get("CONTEXT_REPLAY_TOKENS"), "CONTEXT_REPLAY_TOKENS", 4_000, 0, 32_000, problems
        )

        if problems:
            raise ConfigError(problems, source="settings")
        return cls(
            openai_api_key=api_key,
            twilio_auth_token=auth_token,
            public_base_url=public_base_url,
            stream_token_secret=secret,
            openai_realtime_url=realtime_url,
            openai_realtime_model=model,
            twilio_account_sid=account_sid,
            agents_file=agents_file,
            port=port,
            workers=workers,
            log_level=log_level,
            stream_token_ttl_s=ttl_s,
            stream_signature=signature_mode,
            record_calls_dir=Path(record_dir) if record_dir is not None else None,
            log_payloads=log_payloads,
            truncate_slack_ms=slack_ms,
            model_connect_timeout_s=connect_timeout_s,
            model_reconnect_give_up_s=give_up_s,
            rollover_margin_s=margin_s,
            context_replay_tokens=context_tokens,
            quiet_batch_ms=quiet_batch_ms,
            tools_signing_secret=raw_tools_secret.encode() if raw_tools_secret is not None else None,
            database_url=database_url,
            pricing=pricing,
            max_calls=max_calls,
            busy_response="reject" if busy == "reject" else "say",
            min_tokens_remaining=min_tokens,
            drain_timeout_s=drain_s,
            post_call_webhook_url=webhook_url,
            twilio_api_base_url=twilio_api,
            dialtone_api_key=dialtone_key,
            openai_api_base_url=openai_api,
        )

    @property
    def call_config(self) -> CallConfig:
        """The per-call policies these settings choose."""
        return CallConfig(
            truncate_slack_ms=self.truncate_slack_ms,
            reconnect=ReconnectPolicy(give_up_s=self.model_reconnect_give_up_s),
            rollover=RolloverPolicy(margin_s=self.rollover_margin_s),
            context_tokens=self.context_replay_tokens,
            quiet_batch_ms=self.quiet_batch_ms,
        )

    @property
    def is_azure(self) -> bool:
        host = urlsplit(self.openai_realtime_url).hostname or ""
        return host.endswith(".openai.azure.com")

    @property
    def realtime_auth_headers(self) -> dict[str, str]:
        """Headers that authenticate the Realtime socket: ``api-key`` on Azure, a Bearer token elsewhere."""
        if self.is_azure:
            return {"api-key": self.openai_api_key}
        return {"Authorization": f"Bearer {self.openai_api_key}"}

    @property
    def openai_api_headers(self) -> dict[str, str]:
        """Headers that authenticate a request to ``OPENAI_API_BASE_URL``: ``api-key`` on Azure, else a
        Bearer token."""
        host = urlsplit(self.openai_api_base_url).hostname or ""
        if host.endswith(".openai.azure.com"):
            return {"api-key": self.openai_api_key}
        return {"Authorization": f"Bearer {self.openai_api_key}"}

    def realtime_connect_url(self, model: str | None = None) -> str:
        """The Realtime URL with ``model`` (default: the configured one) set, other query parameters kept."""
        parts = urlsplit(self.openai_realtime_url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "model"]
        query.append(("model", model or self.openai_realtime_model))
        return urlunsplit(parts._replace(query=urlencode(query)))

    def public_https_url(self, path: str) -> str:
        """``https://<public host>[/prefix]<path>``: the URL Twilio signs for a webhook."""
        return self.public_base_url + _slash(path)

    def public_wss_url(self, path: str) -> str:
        """``wss://<public host>[/prefix]<path>``: the stream URL put in TwiML (and signed on upgrade)."""
        return "wss://" + self.public_base_url.removeprefix("https://") + _slash(path)


def derive_stream_token_secret(auth_token: str) -> bytes:
    """A stream-token key derived from the Twilio auth token (HMAC with a fixed label)."""
    return hmac.new(auth_token.encode("utf-8"), _TOKEN_SECRET_LABEL, hashlib.sha256).digest()


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv_path: str | Path | None = ".env"
) -> Settings:
    """Settings from ``.env`` (if the file exists) overlaid by the environment, which wins."""
    env: dict[str, str] = {}
    if dotenv_path is not None and Path(dotenv_path).is_file():
        env.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    env.update(os.environ if environ is None else environ)
    return Settings.from_env(env)


def _public_base_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme != "https":
        return "must start with https:// (Twilio requires TLS for webhooks and media streams)"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not contain user info"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return "must not have a query string or fragment"
    try:
        parts.port  # noqa: B018 - urlsplit checks the port lazily
    except ValueError:
        return "has an invalid port"
    return None


def _realtime_url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        return "must start with ws:// or wss://"
    if not parts.hostname:
        return "must name a host"
    if parts.fragment:
        return "must not have a fragment"
    try:
        parts.port  # noqa: B018 - urlsplit checks the port lazily
    except ValueError:
        return "has an invalid port"
    names = {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    if {"api-version", "deployment"} & names:
        return (
            "the Azure preview API (api-version/deployment) is retired; "
            "use wss://<resource>.openai.azure.com/openai/v1/realtime"
        )
    return None


def _int_in(raw: str | None, name: str, default: int, low: int, high: int, problems: list[str]) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        problems.append(f"{name}: must be an integer from {low} to {high} (got {_show(raw)})")
        return default
    return value


def _float_in(
    raw: str | None, name: str, default: float, low: float, high: float, problems: list[str]
) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # NaN fails too
        problems.append(f"{name}: must be a number from {low:g} to {high:g} (got {_show(raw)})")
        return default
    return value


def _bool(raw: str | None, name: str, problems: list[str]) -> bool:
    if raw is None:
        return False
    if raw.lower() in _TRUE:
        return True
    if raw.lower() not in _FALSE:
        problems.append(f"{name}: must be true or false (got {_show(raw)})")
    return False


def _show(value: str) -> str:
    """A non-secret value, shortened for a message."""
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _slash(path: str) -> str:
    return path if path.startswith("/") else "/" + path
