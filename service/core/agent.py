"""What the call logic needs to know of an agent: the values of one validated entry of the agents file.

Pure data (frozen). :mod:`service.agents` reads, validates and reloads the file; the call core only
ever sees these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NoiseReduction = Literal["near_field", "far_field"]


@dataclass(frozen=True, slots=True)
class TurnDetection:
    """Server VAD settings sent in ``session.audio.input.turn_detection``."""

    type: Literal["server_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Agent:
    """One agent: what the model is told, how it sounds and when it takes its turn."""

    key: str
    instructions: str = field(repr=False)
    voice: str = "marin"
    greeting: str | None = field(default=None, repr=False)
    model: str | None = None
    turn_detection: TurnDetection = TurnDetection()
    transcription_model: str = "gpt-4o-mini-transcribe"
    noise_reduction: NoiseReduction | None = "near_field"

    @property
    def voice_param(self) -> str | dict[str, str]:
        """The GA ``audio.output.voice`` value: a name, or ``{"id": ...}`` for a custom voice."""
        return {"id": self.voice} if self.voice.startswith("voice_") else self.voice
