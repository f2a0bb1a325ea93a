"""The GA session object the simulator keeps per connection: its defaults (as ``session.created``
carries them), partial updates (``session.update``), and the audio formats it names.

A format is the session's ``{"type": "audio/pcm", "rate": 24000}`` (PCM16 little-endian at 24 kHz),
``{"type": "audio/pcmu"}`` or ``{"type": "audio/pcma"}`` (G.711 at 8 kHz).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from service.sim.realtime_schema import MODEL_RATE_HZ, Json
from service.sim.script import Clip, alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

G711_RATE_HZ = 8_000
PCM_BYTES_PER_MS = 48
G711_BYTES_PER_MS = 8
SESSION_LIFETIME_S = 3600  # the GA maximum: 60 minutes
#: The reason of the close (code 1001) at the session limit, as captured; the same whatever the limit.
SESSION_LIMIT_REASON = "Your session hit the maximum duration of 60 minutes."
DEFAULT_INSTRUCTIONS = (
    "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. "
    "Your voice and personality should be warm and engaging."
)


def default_turn_detection(kind: str = "server_vad") -> Json:
    if kind == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": "auto",
            "create_response": True,
            "interrupt_response": True,
        }
    return {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
        "idle_timeout_ms": None, "create_response": True, "interrupt_response": True,
    }  # fmt: skip


def default_session(
    session_id: str, model: str, now_s: float, lifetime_s: float = SESSION_LIFETIME_S
) -> Json:
    """The session object of ``session.created`` (GA defaults, as captured). ``expires_at`` is the
    deadline in epoch seconds: ``floor(now_s + lifetime_s)``."""
    pcm = {"type": "audio/pcm", "rate": MODEL_RATE_HZ}
    turn_detection = default_turn_detection() | {"silence_duration_ms": 200}
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
        "output_modalities": ["audio"], "instructions": DEFAULT_INSTRUCTIONS, "tools": [],
        "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None, "truncation": "auto",
        "prompt": None, "expires_at": math.floor(now_s + lifetime_s), "include": None,
        "audio": {
            "input": {"format": dict(pcm), "transcription": None, "noise_reduction": None,
                      "turn_detection": turn_detection},
            "output": {"format": dict(pcm), "voice": "alloy", "speed": 1.0},
        },
    }  # fmt: skip


#: Objects an update replaces whole (a tagged union: fields of the old variant must not survive).
REPLACED_WHOLE = frozenset({"format", "tool_choice", "truncation", "tracing", "prompt"})


def merge_session(current: Json, update: Json) -> Json:
    """A GA partial update: present fields replace, nested objects merge, null disables.
    ``turn_detection`` is replaced whole (missing fields take their defaults), and so are the
    objects of :data:`REPLACED_WHOLE`."""
    merged = dict(current)
    for key, value in update.items():
        if key == "turn_detection" and isinstance(value, dict):
            merged[key] = default_turn_detection(str(value["type"])) | value
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in REPLACED_WHOLE:
            merged[key] = merge_session(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- audio formats -------------------------------------------------------------------------------


def bytes_per_ms(fmt: Json) -> int:
    return PCM_BYTES_PER_MS if fmt.get("type") == "audio/pcm" else G711_BYTES_PER_MS


def rate_hz(fmt: Json) -> int:
    return MODEL_RATE_HZ if fmt.get("type") == "audio/pcm" else G711_RATE_HZ


def decode_input(data: bytes, fmt: Json) -> npt.NDArray[np.int16]:
    """Appended audio as samples at :func:`rate_hz` (an odd trailing PCM16 byte is dropped)."""
    kind = fmt.get("type")
    if kind == "audio/pcmu":
        return ulaw_decode(data)
    if kind == "audio/pcma":
        return alaw_decode(data)
    return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")


def encode_output(clip: Clip, fmt: Json) -> bytes:
    """The clip in the session's output format (24 kHz PCM16, or G.711 at 8 kHz)."""
    samples = np.frombuffer(clip.pcm, dtype="<i2").astype(np.float64)
    target_hz = rate_hz(fmt)
    if clip.rate_hz != target_hz:
        if clip.rate_hz > target_hz:  # windowed-sinc low-pass before decimating
            cutoff = 0.45 * target_hz / clip.rate_hz
            n = np.arange(-48, 49)
            taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(len(n))
            samples = np.convolve(samples, taps / taps.sum(), mode="same")
        count = len(samples) * target_hz // clip.rate_hz
        positions = np.arange(count) * (clip.rate_hz / target_hz)
        samples = np.interp(positions, np.arange(len(samples)), samples)
    pcm = np.clip(np.round(samples), -32768, 32767).astype(np.int16)
    if fmt.get("type") == "audio/pcmu":
        return ulaw_encode(pcm)
    if fmt.get("type") == "audio/pcma":
        return alaw_encode(pcm)
    return pcm.astype("<i2").tobytes()
