"""What the simulators play: audio clips, G.711 codecs, and the two kinds of script.

- :class:`Clip` is one fixture (PCM16 mono, its rate, its text) loaded with :func:`load_clip` from
  ``fixtures/audio`` (text from ``transcripts.toml``).
- :class:`ReplyScript` tells the Realtime simulator what each response does: play a :class:`Clip`, a
  :class:`Preamble` then an answer (two audio items in one response), call a function
  (:class:`FunctionCall`: the next response, after the client's ``function_call_output``, plays its
  ``then``) or an MCP tool (:class:`McpCall`: the server calls it and the same response speaks the
  answer).
- :class:`Say` / :class:`Press` / :class:`HangUp` with the triggers :class:`At`,
  :class:`AfterAgentSilent` and :class:`AfterAgentStarted` make up a caller script for the Twilio
  caller simulator.
- :func:`ulaw_encode` / :func:`ulaw_decode` / :func:`alaw_encode` / :func:`alaw_decode` are the
  G.711 codecs (ITU-T G.711, numpy), written here so the simulators do not depend on the service.
"""

from __future__ import annotations

import tomllib
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

FIXTURES_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "audio"

#: The default replies: turn n of the caller gets ``REPLIES[n-1]`` (see :class:`ReplyScript`).
DEFAULT_GREETING = "reply_greeting"
DEFAULT_REPLIES = ("reply_short", "reply_long", "reply_followup")


@dataclass(frozen=True, slots=True)
class Clip:
    """A mono PCM16 little-endian clip."""

    name: str
    text: str
    rate_hz: int
    pcm: bytes = field(repr=False)

    @property
    def duration_ms(self) -> int:
        return len(self.pcm) // 2 * 1000 // self.rate_hz


def load_clip(name: str, fixtures_dir: Path = FIXTURES_DIR) -> Clip:
    """Load ``<fixtures_dir>/<name>.wav`` and its text from ``transcripts.toml``."""
    with (fixtures_dir / "transcripts.toml").open("rb") as f:
        texts = tomllib.load(f)
    entry = texts.get(name)
    if not isinstance(entry, dict):
        raise KeyError(f"no clip named {name!r} in {fixtures_dir / 'transcripts.toml'}")
    with wave.open(str(fixtures_dir / str(entry["file"])), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{name}: expected mono 16-bit PCM")
        pcm = w.readframes(w.getnframes())
        rate_hz = w.getframerate()
    return Clip(name=name, text=str(entry["text"]), rate_hz=rate_hz, pcm=pcm)


# --- G.711 -----------------------------------------------------------------------------------

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)


_ULAW_TO_PCM = _ulaw_decode_table()
_ALAW_TO_PCM = _alaw_decode_table()


def ulaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """mu-law bytes -> int16 samples."""
    return _ULAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)]


def alaw_decode(data: bytes) -> npt.NDArray[np.int16]:
    """A-law bytes -> int16 samples."""
    return _ALAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)]


def ulaw_encode(samples: npt.NDArray[np.int16]) -> bytes:
    """int16 samples -> mu-law bytes (the G.711 segment encoder on 14-bit magnitudes, as in the
    reference implementation; silence 0 encodes as 0xFF)."""
    x = samples.astype(np.int32) >> 2
    sign = np.where(x < 0, 0x00, 0x80)
    magnitude = np.minimum(np.minimum(np.abs(x), _ULAW_CLIP) + (_ULAW_BIAS >> 2), 0x1FFF)
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 5
    mantissa = (magnitude >> (exponent + 1)) & 0x0F
    codes = (sign | ((7 - exponent) << 4) | (0x0F - mantissa)) & 0xFF
    return bytes(codes.astype(np.uint8).tobytes())


def alaw_encode(samples: npt.NDArray[np.int16]) -> bytes:
    """int16 samples -> A-law bytes."""
    x = samples.astype(np.int32) >> 3
    sign = np.where(x >= 0, 0x80, 0x00)
    magnitude = np.minimum(np.where(x >= 0, x, -x - 1), 0x0FFF)
    exponent = np.maximum(np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4, 0)
    mantissa = np.where(exponent == 0, magnitude >> 1, magnitude >> exponent) & 0x0F
    codes = (sign | (exponent << 4) | mantissa) ^ 0x55
    return bytes(codes.astype(np.uint8).tobytes())


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    return ulaw_encode(np.frombuffer(pcm, dtype="<i2"))


# --- Realtime simulator: what a response does --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preamble:
    """One response, two audio items: a short ``preamble`` (what ``gpt-realtime-2`` says first, e.g.
    "Let me check.") then the ``answer``, each with its own item id, output index (0, 1), deltas,
    transcript and done events."""

    preamble: Clip
    answer: Clip


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """The response calls the function ``name`` (declared in ``session.tools``, else an anomaly) with
    ``arguments``, a JSON string sent as is (a test may script invalid JSON), after speaking
    ``preamble`` in the same response if there is one. Once the client has sent the call's
    ``function_call_output``, the next response does ``then`` (a clip, or another call: calls chain),
    unless the caller has had a turn since the output: that turn's reply wins and ``then`` is dropped.
    A response that starts while the call still has no output and no new user turn plays ``waiting``
    (e.g. a filler the bridge asked for); without one that is an anomaly and the reply is replayed."""

    name: str
    arguments: str
    then: Reply
    preamble: Clip | None = None
    waiting: Clip | None = None


@dataclass(frozen=True, slots=True)
class McpCall:
    """The response calls the tool ``name`` of the MCP server ``server_label`` (an ``mcp`` entry of
    ``session.tools``, else an anomaly): the server runs it itself, so the same response goes on with
    ``answer``. ``output`` is the tool's result; with ``error`` the call fails
    (``response.mcp_call.failed``, a ``tool_execution_error`` on the item) and ``answer`` is what the
    model says about that. ``preamble`` is spoken first, in the same response."""

    server_label: str
    name: str
    arguments: str
    answer: Clip
    output: str = ""
    error: str | None = None
    preamble: Clip | None = None


Reply = Clip | Preamble | FunctionCall | McpCall


def reply_clips(reply: Reply) -> list[Clip]:
    """The clips a reply plays in its own response (not those of a function call's ``then``)."""
    match reply:
        case Clip():
            return [reply]
        case Preamble():
            return [reply.preamble, reply.answer]
        case FunctionCall():
            return [reply.preamble] if reply.preamble is not None else []
        case McpCall():
            return [*([reply.preamble] if reply.preamble is not None else []), reply.answer]


@dataclass(frozen=True, slots=True)
class ReplyScript:
    """Chooses what each response does (:data:`Reply`: a clip, a preamble and an answer, a function
    call or an MCP call).

    A response that starts before any user turn plays ``greeting`` (e.g. the bridge's explicit
    ``response.create`` with greeting instructions). After user turn n (n counts committed user
    audio and user messages created by the client) a response plays ``replies[n-1]``; past the end
    of the list it plays ``fallback`` (or the last reply if there is none). A response that follows a
    scripted function call's output plays that call's ``then`` instead, whatever the turn.
    ``caller_transcripts[n-1]`` is the input transcription of user turn n ("(inaudible)" past the
    end): the simulator has no speech recogniser.
    """

    greeting: Reply | None
    replies: tuple[Reply, ...]
    fallback: Reply | None = None
    caller_transcripts: tuple[str, ...] = ()

    @classmethod
    def default(cls, fixtures_dir: Path = FIXTURES_DIR) -> ReplyScript:
        caller = ("caller_question", "caller_followup", "caller_interrupt")
        return cls(
            greeting=load_clip(DEFAULT_GREETING, fixtures_dir),
            replies=tuple(load_clip(n, fixtures_dir) for n in DEFAULT_REPLIES),
            caller_transcripts=tuple(load_clip(n, fixtures_dir).text for n in caller),
        )

    def reply_for(self, user_turns: int) -> Reply:
        if user_turns == 0 and self.greeting is not None:
            return self.greeting
        index = max(user_turns - 1, 0)
        if index < len(self.replies):
            return self.replies[index]
        if self.fallback is not None:
            return self.fallback
        if self.replies:
            return self.replies[-1]
        if self.greeting is not None:
            return self.greeting
        raise LookupError("ReplyScript has no clip to play")

    def transcript_for(self, user_turn: int) -> str:
        if 1 <= user_turn <= len(self.caller_transcripts):
            return self.caller_transcripts[user_turn - 1]
        return "(inaudible)"

    def mcp_tool_names(self, server_label: str) -> list[str]:
        """The tools the script calls on the MCP server ``server_label`` (what its listing shows)."""
        names: list[str] = []
        todo: list[Reply] = [r for r in (self.greeting, *self.replies, self.fallback) if r is not None]
        while todo:
            reply = todo.pop(0)
            if isinstance(reply, FunctionCall):
                todo.append(reply.then)
            elif (
                isinstance(reply, McpCall) and reply.server_label == server_label and reply.name not in names
            ):
                names.append(reply.name)
        return names


# --- Twilio caller simulator: the caller's script ---------------------------------------------


@dataclass(frozen=True, slots=True)
class At:
    """At a fixed stream time (ms since the stream started)."""

    stream_ms: int


@dataclass(frozen=True, slots=True)
class AfterAgentSilent:
    """When the agent has spoken since the previous step ended and nothing has been left to play
    for ``silence_ms``. If the agent has not spoken ``timeout_ms`` after the previous step ended,
    fire anyway (None: wait until the call's hard cap)."""

    silence_ms: int = 700
    timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class AfterAgentStarted:
    """``delay_ms`` after agent audio started playing (the first audio heard after the previous step
    ended): used to interrupt mid-answer. ``timeout_ms`` as in :class:`AfterAgentSilent`."""

    delay_ms: int
    timeout_ms: int | None = None


Trigger = At | AfterAgentSilent | AfterAgentStarted


@dataclass(frozen=True, slots=True)
class Say:
    """The caller speaks ``clip`` (8 kHz PCM16) when ``after`` fires. The step ends when the last
    frame of the clip has been sent."""

    clip: Clip
    after: Trigger = field(default_factory=AfterAgentSilent)


@dataclass(frozen=True, slots=True)
class HangUp:
    """The caller hangs up (Twilio sends ``stop`` and closes the socket) when ``after`` fires."""

    after: Trigger = field(default_factory=AfterAgentSilent)


#: The keys a Twilio ``dtmf`` message can carry.
TWILIO_DTMF_DIGITS = frozenset("0123456789*#")


@dataclass(frozen=True, slots=True)
class Press:
    """The caller presses ``digits`` on the keypad when ``after`` fires: Twilio sends one ``dtmf``
    message per key, ``interval_ms`` of stream time apart. The step ends with the last key.
    ValueError for an empty string or a key Twilio does not report (only ``0-9 * #``)."""

    digits: str
    after: Trigger = field(default_factory=AfterAgentSilent)
    interval_ms: int = 150

    def __post_init__(self) -> None:
        if not self.digits:
            raise ValueError("Press needs at least one key")
        for i, ch in enumerate(self.digits):
            if ch not in TWILIO_DTMF_DIGITS:
                raise ValueError(f"{ch!r} (position {i}) is not a key Twilio reports: use 0-9, * and #")
        if self.interval_ms < 0:
            raise ValueError("interval_ms must not be negative")


Step = Say | HangUp | Press
