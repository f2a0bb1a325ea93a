"""Twilio Media Streams wire format: parse what Twilio sends, serialize what we send.

Pure: text in, values out. Base64 and JSON stop here; the rest of Dialtone sees bytes and ints.
Inbound values are events (nouns), outbound values are commands (verbs). A message we cannot use
becomes :class:`Invalid` (with a reason that never quotes the payload) and an unknown ``event``
becomes :class:`Unknown`: neither raises, so a misbehaving peer never ends a call by itself.

Wire facts (``shared/reference/twilio.md`` §3): every frame is a JSON text frame; ``sequenceNumber``,
``chunk`` and ``timestamp`` are strings; payloads are base64 mu-law, 8 kHz mono.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from service.wire import fields
from service.wire.fields import FieldError

BYTES_PER_MS = 8
"""mu-law at 8 kHz: one byte per sample, eight samples per millisecond."""
FRAME_MS = 20
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
MAX_MESSAGE_CHARS = 64 * 1024
"""A real inbound frame is about 300 characters; anything this big is refused before JSON parsing."""
MAX_PAYLOAD_BYTES = 8 * 1024
"""One second of mu-law; Twilio sends 160-byte frames."""
MAX_COUNTER_DIGITS = 12
"""``chunk`` and ``timestamp`` longer than this are refused: 10**12 ms is over 31 years of stream."""


# --- events (Twilio -> us) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str
    sample_rate_hz: int
    channels: int


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str]
    media_format: MediaFormat


# Hot path: not frozen (a frozen dataclass pays object.__setattr__ per field, ~1 us a message);
# treated as immutable all the same.
@dataclass(slots=True)
class Media:
    """One frame of caller audio.

    ``timestamp_ms`` (ms since the stream started) is None when the sender's ``timestamp`` is absent or not
    a non-negative decimal of at most :data:`MAX_COUNTER_DIGITS` digits: a bad clock never costs the audio.
    """

    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int | None
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Mark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    digit: str


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str
    call_sid: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed message whose ``event`` we do not know."""

    event: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message we could not use. ``reason`` names the problem, never the payload."""

    reason: str


Event: TypeAlias = Connected | Start | Media | Mark | Dtmf | Stop | Unknown | Invalid


# --- commands (us -> Twilio) -------------------------------------------------------------------------


# Hot path: not frozen (a frozen dataclass pays object.__setattr__ per field, ~1 us a message);
# treated as immutable all the same.
@dataclass(slots=True)
class SendMedia:
    stream_sid: str
    payload: bytes = field(repr=False)


# Hot path: not frozen (a frozen dataclass pays object.__setattr__ per field, ~1 us a message);
# treated as immutable all the same.
@dataclass(slots=True)
class SendMark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class SendClear:
    stream_sid: str


Command: TypeAlias = SendMedia | SendMark | SendClear


def serialize(command: Command) -> str:
    """The JSON text frame for ``command``."""
    match command:
        case SendMedia(stream_sid=sid, payload=payload):
            # The hot path (50 a second per call): base64 needs no JSON escaping, so skip the encoder.
            audio = binascii.b2a_base64(payload, newline=False).decode("ascii")
            return f'{{"event":"media","streamSid":{fields.dumps_str(sid)},"media":{{"payload":"{audio}"}}}}'
        case SendMark(stream_sid=sid, name=name):
            return json.dumps(
                {"event": "mark", "streamSid": sid, "mark": {"name": name}}, separators=(",", ":")
            )
        case SendClear(stream_sid=sid):
            return json.dumps({"event": "clear", "streamSid": sid}, separators=(",", ":"))


# --- parsing -------------------------------------------------------------------------------------------


def _decimal(value: object) -> int | None:
    """A counter as Twilio sends it (a decimal string; an int is accepted too), or None if it is not one.

    Non-negative and at most :data:`MAX_COUNTER_DIGITS` digits. ASCII only: ``str.isdigit`` also accepts
    digits such as "²" that ``int`` refuses.
    """
    if type(value) is str:
        if len(value) <= MAX_COUNTER_DIGITS and value.isascii() and value.isdigit():
            return int(value)
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**MAX_COUNTER_DIGITS:
        return value
    return None


def _counter(obj: Mapping[str, Any], key: str, where: str) -> int:
    number = _decimal(obj.get(key))
    if number is None:
        raise FieldError(f"{where}.{key} must be a decimal string")
    return number


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise FieldError(f"{where}.{key} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise FieldError(f"{where}.{key} must be an integer") from None


def _payload(text: object) -> bytes:
    if type(text) is not str:
        raise FieldError("media.payload must be a base64 string")
    if len(text) > (MAX_PAYLOAD_BYTES * 4) // 3 + 4:
        raise FieldError("media.payload is larger than the limit")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise FieldError("media.payload is not valid base64") from None


def _start(msg: Mapping[str, Any]) -> Start:
    start = fields.obj(msg, "start", "start")
    params = start.get("customParameters", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise FieldError("start.customParameters must be an object of strings")
    fmt = fields.obj(start, "mediaFormat", "start")
    tracks = start.get("tracks", [])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise FieldError("start.tracks must be a list of strings")
    return Start(
        stream_sid=fields.text(msg, "streamSid", "start"),
        account_sid=fields.text_or(start, "accountSid", "start"),
        call_sid=fields.text(start, "callSid", "start"),
        tracks=tuple(tracks),
        custom_parameters=dict(params),
        media_format=MediaFormat(
            encoding=fields.text(fmt, "encoding", "start.mediaFormat"),
            sample_rate_hz=_int(fmt, "sampleRate", "start.mediaFormat"),
            channels=_int(fmt, "channels", "start.mediaFormat"),
        ),
    )


def _media(msg: Mapping[str, Any]) -> Media:
    # The hot path (50 a second per call): the checks of fields.* written out, one dict lookup each.
    media = msg.get("media")
    if type(media) is not dict:
        raise FieldError("media.media must be an object")
    payload = _payload(media.get("payload"))
    if len(payload) % 2:
        # Twilio's frames are whole milliseconds (8 bytes each); an odd size is a broken sender.
        # Skipping it keeps the input clock right: the next frame's timestamp shows the gap.
        raise FieldError("media.payload has an odd number of bytes")
    stream_sid = msg.get("streamSid")
    if type(stream_sid) is not str:
        raise FieldError("media.streamSid must be a string")
    track = media.get("track", "inbound")
    if type(track) is not str:
        raise FieldError("media.track must be a string")
    chunk = _decimal(media.get("chunk"))
    if chunk is None:
        raise FieldError("media.chunk must be a decimal string")
    return Media(stream_sid, track, chunk, _decimal(media.get("timestamp")), payload)


def parse(text: str | bytes) -> Event:
    """Turn one websocket message from Twilio into an event. Never raises."""
    if isinstance(text, bytes):
        return Invalid("binary frame (Twilio sends JSON text frames)")
    if len(text) > MAX_MESSAGE_CHARS:
        return Invalid(f"message of {len(text)} characters exceeds the {MAX_MESSAGE_CHARS} limit")
    try:
        msg = fields.loads(text)
    except ValueError:
        return Invalid("not JSON")
    except RecursionError:
        # '[' * 50000 fits under the size limit; the decoder gives up at the recursion limit (~1000 deep,
        # so a real frame never gets near it). Checked here rather than by scanning every frame first.
        return Invalid("JSON nested too deeply")
    if not isinstance(msg, dict):
        return Invalid("not a JSON object")
    kind = msg.get("event")
    if not isinstance(kind, str):
        return Invalid("no event field")
    try:
        match kind:
            case "connected":
                return Connected(fields.text_or(msg, "protocol", kind), fields.text_or(msg, "version", kind))
            case "start":
                return _start(msg)
            case "media":
                return _media(msg)
            case "mark":
                return Mark(
                    fields.text(msg, "streamSid", kind),
                    fields.text(fields.obj(msg, "mark", kind), "name", "mark"),
                )
            case "dtmf":
                return Dtmf(
                    fields.text(msg, "streamSid", kind),
                    fields.text(fields.obj(msg, "dtmf", kind), "digit", "dtmf"),
                )
            case "stop":
                stop = msg.get("stop")
                call_sid = fields.text_or(stop, "callSid", kind) if isinstance(stop, dict) else ""
                return Stop(fields.text(msg, "streamSid", kind), call_sid)
            case _:
                return Unknown(kind[:64])
    except FieldError as exc:
        return Invalid(str(exc))
