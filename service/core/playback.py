"""The playback ledger: what the caller has actually heard of each assistant item.

Pure. The model generates audio faster than real time; Twilio buffers it and plays it at 8 bytes/ms.
The only evidence of playback is Twilio echoing a ``mark`` once the audio queued before it has played
(``shared/reference/twilio.md`` §3). A ``clear`` also echoes every pending mark, and nothing in the echo
tells the two apart, so every mark name carries a *generation* that is bumped on each ``clear``: an
echo from an older generation was flushed, not played.

Mark names: ``<item_id>:<end_ms>:g<generation>:m<seq>``, where ``end_ms`` is the item's audio position
(model milliseconds) at the end of the frame the mark follows. Item ids are parsed from the right, so an
id containing ``:`` still round-trips.

Units: ``*_ms`` on an item are model milliseconds of that item's audio (PCM16 24 kHz = 48 bytes/ms),
which is what ``conversation.item.truncate.audio_end_ms`` counts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MODEL_BYTES_PER_MS = 48
FRAME_MS = 20


@dataclass(slots=True)
class ItemAudio:
    """Counters for one assistant item."""

    item_id: str
    response_id: str
    generated_bytes: int = 0
    sent_ms: int = 0
    played_ms: int = 0
    done: bool = False
    chunks: deque[tuple[int, int, float]] = field(default_factory=deque)
    """Chunks sent and not yet echoed: (end ms, duration ms, when sent)."""
    tones: bool = False
    """Keypad tones we play (``send_dtmf``), not a model item: never truncated."""

    @property
    def generated_ms(self) -> int:
        return self.generated_bytes // MODEL_BYTES_PER_MS

    @property
    def fully_played(self) -> bool:
        return self.done and self.played_ms >= self.generated_ms


@dataclass(frozen=True, slots=True)
class Truncation:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class Echo:
    """A mark echo, decoded. ``counted`` is False when a ``clear`` flushed it (older generation)."""

    item_id: str
    end_ms: int
    counted: bool


class PlaybackLedger:
    """Per-call ledger of generated, sent and played audio, item by item."""

    def __init__(self, truncate_slack_ms: int = 0) -> None:
        self.generation = 0
        self.truncate_slack_ms = truncate_slack_ms
        self._items: dict[str, ItemAudio] = {}
        self._seq = 0
        self._last_echo: tuple[str, float] | None = None  # (item, when) of the newest counted echo

    def item(self, item_id: str) -> ItemAudio | None:
        return self._items.get(item_id)

    def open_item(self, item_id: str, response_id: str) -> ItemAudio:
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = ItemAudio(item_id, response_id)
        return item

    def add_tones(self, item_id: str, ms: int) -> ItemAudio:
        """A stretch of keypad tones to play, accounted like an item (in model ms, for the same sums)."""
        item = self.open_item(item_id, "")
        item.generated_bytes = ms * MODEL_BYTES_PER_MS
        item.done = True
        item.tones = True
        return item

    def add_generated(self, item_id: str, response_id: str, n_bytes: int) -> ItemAudio:
        item = self.open_item(item_id, response_id)
        item.generated_bytes += n_bytes
        return item

    def frame_sent(self, item_id: str, frame_ms: int, now: float = float("-inf")) -> str:
        """Account ``frame_ms`` of audio sent to Twilio at ``now`` (one media message); returns the name
        of the mark to follow it."""
        item = self._items[item_id]
        item.sent_ms += frame_ms
        end_ms = min(item.sent_ms, item.generated_ms)
        item.chunks.append((end_ms, frame_ms, now))
        return self._mark(item_id, end_ms)

    def start_mark(self, item_id: str) -> str:
        """Name of the mark sent just before an item's first frame: it echoes when playback starts."""
        return self._mark(item_id, 0)

    def _mark(self, item_id: str, end_ms: int) -> str:
        self._seq += 1
        return f"{item_id}:{end_ms}:g{self.generation}:m{self._seq}"

    def finish(self, item_id: str) -> None:
        """The item's audio is complete (``response.output_audio.done``)."""
        item = self._items.get(item_id)
        if item is not None:
            item.done = True

    def echo(self, name: str, now: float) -> Echo | None:
        """Record a mark echo received at ``now``. ``None`` if the name is not one of ours."""
        parts = name.rsplit(":", 3)
        if len(parts) != 4 or not parts[2].startswith("g") or not parts[3].startswith("m"):
            return None
        item_id, end_text, gen_text = parts[0], parts[1], parts[2][1:]
        if not (end_text.isdigit() and gen_text.isdigit()):
            return None
        end_ms = int(end_text)
        counted = int(gen_text) == self.generation
        item = self._items.get(item_id)
        if counted and item is not None:
            item.played_ms = max(item.played_ms, min(end_ms, item.generated_ms))
            chunks = item.chunks
            while chunks and chunks[0][0] <= end_ms:
                chunks.popleft()
            self._last_echo = (item_id, now)
            if item.fully_played:
                del self._items[item_id]
        return Echo(item_id, end_ms, counted)

    def unplayed_items(self) -> list[str]:
        """Model items with audio queued at Twilio or still waiting to be sent."""
        return [i.item_id for i in self._items.values() if i.played_ms < i.generated_ms and not i.tones]

    def has_unplayed(self) -> bool:
        """Is any agent audio queued at Twilio or still waiting to be sent?"""
        return any(item.played_ms < item.generated_ms for item in self._items.values())

    def heard_ms(self, item: ItemAudio, now: float) -> int:
        """Best estimate of how much of ``item`` the caller has heard at ``now``.

        The echoed marks give a lower bound that lags by up to one chunk (the chunk playing now has not
        echoed yet). When the newest echo is this item's and more of it was sent behind that mark, the
        next chunk has been playing since the echo, or since it was sent if that was later (Twilio's
        buffer had run dry): add the time elapsed, at most that chunk.
        """
        heard = item.played_ms
        if self._last_echo is not None and self._last_echo[0] == item.item_id and item.sent_ms > heard:
            if item.chunks:
                _, chunk_ms, sent_at = item.chunks[0]
            else:
                chunk_ms, sent_at = FRAME_MS, float("-inf")
            started = max(self._last_echo[1], sent_at)
            heard += min(chunk_ms, max(0, round((now - started) * 1000)))
        return heard

    def interrupt(self, now: float) -> list[Truncation]:
        """Barge-in at ``now``: bump the generation and say which items to truncate, and where.

        An item is truncated at what was heard (:meth:`heard_ms`, plus the configured slack), clamped
        to what was sent and generated. Items that finished playing, and items of which nothing was
        played, are not truncated. Every item is forgotten afterwards: its remaining echoes are of an
        old generation.
        """
        truncations: list[Truncation] = []
        for item in self._items.values():
            generated_ms = item.generated_ms
            if item.tones or item.played_ms <= 0 or (item.done and item.played_ms >= generated_ms):
                continue
            heard_ms = self.heard_ms(item, now) + self.truncate_slack_ms
            truncations.append(Truncation(item.item_id, min(heard_ms, item.sent_ms, generated_ms)))
        self.generation += 1
        self._items.clear()
        self._last_echo = None
        return truncations
