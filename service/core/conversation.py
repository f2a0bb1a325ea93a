"""The conversation as the caller lived it: caller turns and agent turns, in order, with their text.

Pure. The call feeds it the model's events: a committed caller item opens a caller turn, whose text
arrives later from input transcription (when the agent enables it); an assistant item opens an agent
turn, whose text grows with the output transcript. When the caller cuts the agent off, the turn is
marked interrupted and keeps how much of its audio was heard: :attr:`Turn.heard_text` is the text cut
to that share (an estimate: the transcript carries no timings, so the cut is proportional to audio
heard / audio generated, at a word boundary).

It is the source of the context replayed to a new model session (:func:`service.core.session.context_items`)
and of the call summary. Text never goes to a log line at INFO (it is the caller's personal data).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["caller", "agent", "tool"]


@dataclass(slots=True)
class Turn:
    role: Role
    item_id: str
    started_at: float
    """``now`` (the call's clock) when the turn was opened."""
    text: str = ""
    final: bool = False
    """The text is complete (transcription completed, or the output transcript is done)."""
    interrupted: bool = False
    heard_ms: int | None = None
    """For an interrupted agent turn: model ms of its audio the caller heard."""
    generated_ms: int = 0
    """For an agent turn: model ms of audio generated for it (as received)."""
    name: str | None = None
    """For a tool turn: the function's name (``text`` holds its arguments, JSON)."""
    output: str | None = field(default=None, repr=False)
    """For a tool turn: the output the model was given (None while the tool runs)."""

    @property
    def heard_text(self) -> str:
        """The text the caller heard: all of it, or for an interrupted agent turn, its share."""
        if not self.interrupted or self.heard_ms is None:
            return self.text
        if self.generated_ms <= 0 or self.heard_ms <= 0:
            return ""
        if self.heard_ms >= self.generated_ms:
            return self.text
        cut = len(self.text) * self.heard_ms // self.generated_ms
        head = self.text[:cut]
        if head and not head[-1].isspace() and not self.text[cut].isspace():  # inside a word: drop it
            words = head.rsplit(None, 1)
            head = words[0] if len(words) == 2 else ""
        return head.rstrip()


class Conversation:
    """The turns of one call, in the order the model created their items."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []
        self._by_item: dict[str, Turn] = {}

    def __iter__(self) -> Iterator[Turn]:
        return iter(self.turns)

    def __len__(self) -> int:
        return len(self.turns)

    def turn(self, item_id: str) -> Turn | None:
        return self._by_item.get(item_id)

    def _open(self, role: Role, item_id: str, now: float) -> Turn:
        turn = self._by_item.get(item_id)
        if turn is None:
            turn = self._by_item[item_id] = Turn(role, item_id, now)
            self.turns.append(turn)
        return turn

    # --- caller ------------------------------------------------------------------------------

    def caller_committed(self, item_id: str, now: float) -> None:
        """The server committed the caller's audio as ``item_id`` (a turn of the caller)."""
        self._open("caller", item_id, now)

    def caller_transcript(self, item_id: str, text: str, now: float) -> None:
        turn = self._open("caller", item_id, now)
        turn.text = text.strip()
        turn.final = True

    # --- agent -------------------------------------------------------------------------------

    def agent_item(self, item_id: str, now: float) -> Turn:
        return self._open("agent", item_id, now)

    def agent_audio(self, item_id: str, ms: int, now: float) -> None:
        self.agent_item(item_id, now).generated_ms += ms

    def agent_text(self, item_id: str, delta: str, now: float) -> None:
        turn = self.agent_item(item_id, now)
        if not turn.final:
            turn.text += delta

    def agent_transcript(self, item_id: str, text: str, now: float) -> None:
        turn = self.agent_item(item_id, now)
        turn.text = text
        turn.final = True

    # --- tools -------------------------------------------------------------------------------------

    def tool_call(self, call_id: str, name: str, arguments: str, now: float) -> None:
        turn = self._open("tool", call_id, now)
        turn.name, turn.text = name, arguments

    def tool_output(self, call_id: str, output: str, now: float) -> None:
        turn = self._by_item.get(call_id)
        if turn is not None and turn.role == "tool":
            turn.output = output
            turn.final = True

    def agent_cut(self, item_id: str, heard_ms: int) -> None:
        """The caller heard only ``heard_ms`` of this agent turn (barge-in, or the model socket lost)."""
        turn = self._by_item.get(item_id)
        if turn is not None and turn.role == "agent":
            turn.interrupted = True
            turn.heard_ms = heard_ms if turn.heard_ms is None else min(turn.heard_ms, heard_ms)
