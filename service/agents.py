"""Per-number agents from a TOML file, validated up front and reloaded when the file changes.

    [default]                       # optional: the agent for numbers without an entry
    instructions = "..."            # required (here or inherited from [default])
    voice = "marin"                 # built-in voice or a custom "voice_..." id; default marin
    greeting = "..."                # optional: the agent speaks first; "" turns an inherited greeting off
    model = "gpt-realtime-2.1"      # optional, else OPENAI_REALTIME_MODEL
    transcription_model = "gpt-4o-mini-transcribe"
    noise_reduction = "near_field"  # near_field | far_field | off
    max_call_s = 900                # optional: the longest an outbound call may last (Twilio's TimeLimit)
    voicemail_message = "..."       # optional: left after the beep when a machine answers an outbound call
    post_call_webhook = "https://..."   # optional: each call's record POSTed there (signed), else
                                        # POST_CALL_WEBHOOK_URL
    [default.turn_detection]        # server_vad; every key optional
    threshold = 0.5
    prefix_padding_ms = 300
    silence_duration_ms = 500
    create_response = true
    interrupt_response = true
    idle_timeout_ms = 8000          # optional
    [default.analysis]              # optional: post-call analysis by a text model (off without it)
    model = "gpt-4.1-mini"          # default; any Responses API text model
    success = "The caller booked a table."      # optional: what counts as success (else no verdict)
    fields = { party_size = "the number of guests, an integer or null" }   # optional: name -> what it is
    [numbers."+15551230001"]        # the called number (E.164): inherits every key it does not set
    instructions = "..."
    analysis = false                # (in a number) turns an inherited analysis off; a table's keys are
                                    # inherited one by one from [default.analysis]

The keys that let an agent act (tools, mcp, call_control, transfers, keypad) are described in
:mod:`service.agent_actions`.

``parse_agents(text, source, env)`` is pure and raises ``ConfigError`` listing every problem with its key
path (``env`` fills ``${VAR}`` in tool headers).
``AgentStore`` owns the file: it stats it on each lookup and reloads when it changed; an invalid edit keeps
the last good book and logs the problems once.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from service.agent_actions import ACTION_KEYS, check_references, parse_actions
from service.config import DEPRECATED_MODELS
from service.core.agent import Agent, AnalysisConfig, TurnDetection
from service.errors import ConfigError

__all__ = [
    "BUILTIN_VOICES",
    "DEFAULT_KEY",
    "Agent",
    "AgentBook",
    "AgentStore",
    "TurnDetection",
    "parse_agents",
]

logger = logging.getLogger(__name__)

DEFAULT_KEY = "default"
BUILTIN_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)

MAX_CALL_S = 14_400
"""Twilio's longest ``TimeLimit`` (4 hours)."""

_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_CUSTOM_VOICE = re.compile(r"voice_[A-Za-z0-9_-]+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_AGENT_KEYS = frozenset(
    {
        "instructions", "voice", "greeting", "model", "transcription_model", "noise_reduction",
        "turn_detection", "post_call_webhook", "max_call_s", "voicemail_message", "analysis",
    }
)  # fmt: skip
_ANALYSIS_KEYS = frozenset({"model", "success", "fields"})
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_NOT_TEXT_MODELS = ("realtime", "transcribe", "tts", "whisper", "audio", "embedding", "dall-e", "image")
MAX_ANALYSIS_FIELDS = 50
MAX_ANALYSIS_TEXT = 2_000
_TURN_KEYS = frozenset(
    {
        "type",
        "threshold",
        "prefix_padding_ms",
        "silence_duration_ms",
        "create_response",
        "interrupt_response",
        "idle_timeout_ms",
    }
)


@dataclass(frozen=True, slots=True)
class AgentBook:
    """Every agent of one valid file. ``for_number`` falls back to the default agent."""

    default: Agent | None
    numbers: Mapping[str, Agent]

    def for_number(self, to: str) -> Agent | None:
        return self.numbers.get(to.strip(), self.default)

    def by_key(self, key: str) -> Agent | None:
        return self.default if key == DEFAULT_KEY else self.numbers.get(key)

    def __len__(self) -> int:
        return len(self.numbers) + (self.default is not None)


def parse_agents(text: str, source: str = "agents file", env: Mapping[str, str] | None = None) -> AgentBook:
    """Parse and validate an agents file; ``ConfigError`` lists every problem with its key path."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], source=source) from None
    problems: list[str] = []
    for key in doc:
        if key not in (DEFAULT_KEY, "numbers"):
            problems.append(f'{_key(key)}: unknown key (expected [default] or [numbers."+E164"])')

    raw_default = doc.get(DEFAULT_KEY)
    default: Agent | None = None
    default_fields: dict[str, Any] = {}
    if raw_default is not None:
        if isinstance(raw_default, dict):
            default_fields = _fields(raw_default, DEFAULT_KEY, env or {}, problems)
            if "instructions" not in default_fields and "instructions" not in raw_default:
                problems.append("default.instructions: required")
            default = _build(DEFAULT_KEY, {}, default_fields, DEFAULT_KEY, problems)
        else:
            problems.append("default: must be a table")

    numbers: dict[str, Agent] = {}
    raw_numbers = doc.get("numbers", {})
    if not isinstance(raw_numbers, dict):
        problems.append('numbers: must be a table of [numbers."+E164"] entries')
        raw_numbers = {}
    for number, raw in raw_numbers.items():
        path = f"numbers.{_key(number, quote=True)}"
        if not _E164.fullmatch(number):
            problems.append(f"{path}: not an E.164 number (+ and 8-15 digits, no spaces)")
        if not isinstance(raw, dict):
            problems.append(f"{path}: must be a table")
            continue
        own = _fields(raw, path, env or {}, problems)
        if "instructions" not in own and "instructions" not in raw and raw_default is None:
            problems.append(f"{path}.instructions: required (there is no [default] to inherit from)")
        agent = _build(number, default_fields, own, path, problems)
        if agent is not None:
            numbers[number] = agent

    if raw_default is None and not raw_numbers and not problems:
        problems.append('no agents: add a [default] table or a [numbers."+E164"] table')
    everyone: dict[str, Agent] = dict(numbers)
    if default is not None:
        everyone[DEFAULT_KEY] = default
    check_references(everyone, problems)
    if problems:
        raise ConfigError(problems, source=source)
    return AgentBook(default=default, numbers=MappingProxyType(numbers))


def _fields(raw: dict[str, Any], path: str, env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """Check one table's own keys; return the valid ones as Agent field values (turn detection as a dict)."""
    out: dict[str, Any] = parse_actions(raw, path, env, problems)
    for name, value in raw.items():
        where = f"{path}.{_key(name)}"
        if name in ACTION_KEYS:
            continue
        if name not in _AGENT_KEYS:
            problems.append(f"{where}: unknown key")
        elif name == "turn_detection":
            if isinstance(value, dict):
                out[name] = _turn_fields(value, where, problems)
            else:
                problems.append(f"{where}: must be a table")
        elif name == "analysis":
            if value is False:
                out[name] = False  # turns an inherited analysis off
            elif isinstance(value, dict):
                out[name] = _analysis_fields(value, where, problems)
            else:
                problems.append(f"{where}: must be a table (model, success, fields) or false")
        elif name == "max_call_s":
            if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CALL_S:
                out[name] = value
            else:
                problems.append(f"{where}: must be a whole number of seconds from 1 to {MAX_CALL_S}")
        elif not isinstance(value, str):
            problems.append(f"{where}: must be a string")
        elif name == "instructions":
            if value.strip():
                out[name] = value
            else:
                problems.append(f"{where}: must not be empty")
        elif name == "voice":
            if value in BUILTIN_VOICES or _CUSTOM_VOICE.fullmatch(value):
                out[name] = value
            else:
                voices = ", ".join(sorted(BUILTIN_VOICES))
                problems.append(f"{where}: must be a built-in voice ({voices}) or a custom voice_... id")
        elif name in ("greeting", "voicemail_message"):
            out[name] = value if value.strip() else None
        elif name == "post_call_webhook":
            if value.startswith(("https://", "http://")) and len(value) <= 2000:
                out[name] = value
            else:
                problems.append(f"{where}: must be an http:// or https:// URL")
        elif name in ("model", "transcription_model"):
            if _NAME.fullmatch(value):
                out[name] = value
            else:
                problems.append(f"{where}: must be a model or deployment name (letters, digits, ._:-)")
        elif value in ("near_field", "far_field", "off"):  # noise_reduction
            out[name] = None if value == "off" else value
        else:
            problems.append(f"{where}: must be near_field, far_field or off")
    return out


def _turn_fields(raw: dict[str, Any], path: str, problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        where = f"{path}.{_key(name)}"
        if name not in _TURN_KEYS:
            problems.append(f"{where}: unknown key")
        elif name == "type":
            if value == "server_vad":
                out[name] = value
            else:
                problems.append(f"{where}: must be server_vad (the only mode supported)")
        elif name in ("create_response", "interrupt_response"):
            if isinstance(value, bool):
                out[name] = value
            else:
                problems.append(f"{where}: must be true or false")
        elif name == "threshold":
            if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
                out[name] = float(value)
            else:
                problems.append(f"{where}: must be between 0 and 1")
        elif not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{where}: must be an integer (milliseconds)")
        elif name == "prefix_padding_ms" and value < 0:
            problems.append(f"{where}: must be 0 or more")
        elif name in ("silence_duration_ms", "idle_timeout_ms") and value <= 0:
            problems.append(f"{where}: must be more than 0")
        else:
            out[name] = value
    return out


def _analysis_fields(raw: dict[str, Any], path: str, problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        where = f"{path}.{_key(name)}"
        if name not in _ANALYSIS_KEYS:
            problems.append(f"{where}: unknown key (expected model, success or fields)")
        elif name == "model":
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                problems.append(f"{where}: must be a model name (letters, digits, ._:-)")
            elif any(word in value.lower() for word in _NOT_TEXT_MODELS):
                problems.append(f"{where}: must be a text model of the Responses API (e.g. gpt-4.1-mini)")
            else:
                out[name] = value
        elif name == "success":
            if isinstance(value, str) and value.strip() and len(value) <= MAX_ANALYSIS_TEXT:
                out[name] = value.strip()
            else:
                problems.append(f"{where}: must be a non-empty text ({MAX_ANALYSIS_TEXT} characters at most)")
        elif not isinstance(value, dict):  # fields
            problems.append(f"{where}: must be a table of name = description")
        elif len(value) > MAX_ANALYSIS_FIELDS:
            problems.append(f"{where}: at most {MAX_ANALYSIS_FIELDS} fields")
        else:
            fields: dict[str, str] = {}
            for field_name, description in value.items():
                at = f"{where}.{_key(field_name)}"
                if not _FIELD_NAME.fullmatch(field_name):
                    problems.append(f"{at}: a field name must be an identifier (letters, digits, _)")
                elif not isinstance(description, str) or not description.strip():
                    problems.append(f"{at}: must be a non-empty description (a string)")
                elif len(description) > MAX_ANALYSIS_TEXT:
                    problems.append(f"{at}: at most {MAX_ANALYSIS_TEXT} characters")
                else:
                    fields[field_name] = description.strip()
            out[name] = MappingProxyType(fields)
    return out


def _analysis(inherited: Any, own: Any) -> AnalysisConfig | None:
    """The agent's analysis: its own table's keys over the default's; ``false`` (or none at all): off."""
    if own is False or (own is None and not isinstance(inherited, dict)):
        return None
    base = inherited if isinstance(inherited, dict) else {}
    return AnalysisConfig(**{**base, **(own or {})})


def _build(
    key: str, inherited: dict[str, Any], own: dict[str, Any], path: str, problems: list[str]
) -> Agent | None:
    merged = {**inherited, **own}
    merged["analysis"] = _analysis(inherited.get("analysis"), own.get("analysis"))
    merged["turn_detection"] = replace(
        TurnDetection(), **{**inherited.get("turn_detection", {}), **own.get("turn_detection", {})}
    )
    if "instructions" not in merged:
        return None  # reported by the caller (missing) or by _fields (invalid)
    return Agent(key=key, **merged)


def _key(name: str, *, quote: bool = False) -> str:
    """A TOML key as written in a path: bare when it can be (and ``quote`` is off), quoted otherwise."""
    return (
        name if not quote and re.fullmatch(r"[A-Za-z0-9_-]+", name) else '"' + name.replace('"', '\\"') + '"'
    )


@dataclass(frozen=True, slots=True)
class _FileStamp:
    mtime_ns: int
    size: int
    inode: int


Stat = Callable[[Path], os.stat_result]


class AgentStore:
    """The agents file, reloaded on access when its stat (mtime, size, inode) changes.

    A missing or invalid file at start-up raises ``ConfigError``. Later, an invalid edit (or a deleted
    file) keeps the last good book and logs the problems once per change.
    """

    def __init__(
        self, path: str | Path, *, stat: Stat = os.stat, env: Mapping[str, str] | None = None
    ) -> None:
        self.path = Path(path)
        self._stat = stat
        self._env: Mapping[str, str] = os.environ if env is None else env
        stamp = self._stamp()
        if stamp is None:
            raise ConfigError(
                [f"{self.path}: file not found or not accessible (set AGENTS_FILE)"], source="agents file"
            )
        self._book = self._load()
        self._seen: _FileStamp | None = stamp

    @property
    def book(self) -> AgentBook:
        """The current book, after reloading the file if it changed."""
        self.reload_if_changed()
        return self._book

    def for_number(self, to: str) -> Agent | None:
        return self.book.for_number(to)

    def by_key(self, key: str) -> Agent | None:
        return self.book.by_key(key)

    def reload_if_changed(self) -> bool:
        """Stat the file; reload it if it changed. True when a new book was installed."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        if stamp is None:
            logger.warning("agents file %s is gone; keeping the last good agents", self.path)
            return False
        try:
            book = self._load()
        except ConfigError as exc:
            logger.warning("agents file %s: edit rejected, keeping the last good agents: %s", self.path, exc)
            return False
        self._book = book
        logger.info("agents file %s reloaded (%d agents)", self.path, len(book))
        return True

    def _stamp(self) -> _FileStamp | None:
        try:
            st = self._stat(self.path)
        except OSError:
            return None
        return _FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)

    def _load(self) -> AgentBook:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"cannot read: {exc.__class__.__name__}"], source=str(self.path)) from None
        book = parse_agents(text, source=str(self.path), env=self._env)
        agents = [book.default, *book.numbers.values()]
        for agent in agents:
            if agent is not None and agent.model in DEPRECATED_MODELS:
                logger.warning("agent %s uses deprecated model %s", agent.key, agent.model)
        return book
