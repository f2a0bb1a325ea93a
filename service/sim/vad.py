"""The simulated server VAD: input samples in, speech started / stopped decisions out.

Pure and synchronous: :class:`ServerVad` keeps the partial window and the speech state, and reads
no clock; times are ms of input audio (the model's input clock), which the caller keeps.

It is energy based, on 10 ms windows. A window is speech when its RMS level reaches
``VAD_FLOOR_DBFS + threshold * VAD_SPAN_DB`` dBFS (threshold 0 -> -60 dBFS, 0.5 -> -35 dBFS,
1 -> -10 dBFS), and speech starts after ``VAD_MIN_SPEECH_MS`` of such windows: the start is the
onset minus ``prefix_padding_ms`` (never before 0; the caller also clamps it to the start of its
uncommitted buffer). Speech stops once ``silence_duration_ms`` has passed without speech; the stop
is that moment. ``semantic_vad`` is approximated by server VAD at threshold 0.5 with 300 ms of
prefix padding and a silence of 400 / 700 / 1000 ms for eagerness high / medium (auto) / low.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

VAD_WINDOW_MS = 10
VAD_FLOOR_DBFS = -60.0
VAD_SPAN_DB = 50.0
VAD_MIN_SPEECH_MS = 20
SEMANTIC_SILENCE_MS = {"high": 400, "medium": 700, "auto": 700, "low": 1000}


@dataclass(frozen=True, slots=True)
class VadParams:
    threshold_dbfs: float
    prefix_padding_ms: int
    silence_duration_ms: int

    @classmethod
    def from_turn_detection(cls, td: Mapping[str, Any]) -> VadParams:
        """From a session's ``turn_detection`` object (``server_vad`` or ``semantic_vad``)."""
        if td["type"] == "semantic_vad":
            return cls(
                VAD_FLOOR_DBFS + 0.5 * VAD_SPAN_DB,
                300,
                SEMANTIC_SILENCE_MS[str(td.get("eagerness", "auto"))],
            )
        threshold_dbfs = VAD_FLOOR_DBFS + float(td["threshold"]) * VAD_SPAN_DB
        return cls(threshold_dbfs, int(td["prefix_padding_ms"]), int(td["silence_duration_ms"]))


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: float  # onset - prefix padding, not before 0


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: float


Decision = SpeechStarted | SpeechStopped


def level_dbfs(window: npt.NDArray[np.int16]) -> float:
    """The RMS level of a window of PCM16 samples, in dBFS."""
    samples = window.astype(np.float64)
    rms = math.sqrt(float(np.mean(samples * samples)))
    return 20 * math.log10(max(rms, 1e-9) / 32768)


class ServerVad:
    """Speech detection over the appended audio, window by window."""

    def __init__(self) -> None:
        self._window = np.zeros(0, dtype=np.int16)  # samples not yet making a whole window
        self._window_start_ms = 0.0
        self._speaking = False
        self._voiced_run_ms = 0
        self._onset_ms = 0.0
        self._last_voice_ms = 0.0

    @property
    def speaking(self) -> bool:
        return self._speaking

    def reset(self, now_ms: float) -> None:
        """Forget the partial window and any speech; the next window starts at ``now_ms``."""
        self._window = np.zeros(0, dtype=np.int16)
        self._window_start_ms = now_ms
        self._voiced_run_ms = 0
        self._speaking = False

    def skip(self, now_ms: float) -> None:
        """Audio up to ``now_ms`` was not analysed (turn detection is off)."""
        self._window_start_ms = now_ms

    def end_speech(self) -> None:
        """The buffer was committed: any speech is over, and a new onset needs a full run."""
        self._speaking = False
        self._voiced_run_ms = 0

    def feed(self, samples: npt.NDArray[np.int16], rate_hz: int, params: VadParams) -> list[Decision]:
        """Analyse appended samples; return the decisions they complete, in order."""
        size = rate_hz * VAD_WINDOW_MS // 1000
        pending = np.concatenate([self._window, samples])
        count = len(pending) // size
        decisions: list[Decision] = []
        for i in range(count):
            level = level_dbfs(pending[i * size : (i + 1) * size])
            decision = self._window_done(level, self._window_start_ms + i * VAD_WINDOW_MS, params)
            if decision is not None:
                decisions.append(decision)
        self._window = pending[count * size :]
        self._window_start_ms += count * VAD_WINDOW_MS
        return decisions

    def _window_done(self, level: float, start_ms: float, params: VadParams) -> Decision | None:
        voiced = level >= params.threshold_dbfs
        end_ms = start_ms + VAD_WINDOW_MS
        if not self._speaking:
            if not voiced:
                self._voiced_run_ms = 0
                return None
            if self._voiced_run_ms == 0:
                self._onset_ms = start_ms
            self._voiced_run_ms += VAD_WINDOW_MS
            if self._voiced_run_ms < VAD_MIN_SPEECH_MS:
                return None
            self._speaking = True
            self._last_voice_ms = end_ms
            return SpeechStarted(max(self._onset_ms - params.prefix_padding_ms, 0.0))
        if voiced:
            self._last_voice_ms = end_ms
        elif end_ms - self._last_voice_ms >= params.silence_duration_ms:
            self._speaking = False
            self._voiced_run_ms = 0
            return SpeechStopped(end_ms)
        return None
