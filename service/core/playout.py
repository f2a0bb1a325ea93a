"""Playout: the model's audio to the caller, and barge-in. Pure.

Model audio (24 kHz PCM16, any chunking) goes through the downward transcoder and out to Twilio in media
messages of whole 20 ms frames, at most :data:`CHUNK_MS` each, each followed by a mark, so the
:class:`PlaybackLedger` learns chunk by chunk what the caller has heard (and, between two echoes, how
long the chunk after the last one has been playing). A delta's audio goes out as soon as it arrives
(whatever whole frames it makes), so the first audio waits for nothing. Fewer, larger messages than a
frame each: a fifth of the messages and mark echoes, for the same truncation accuracy (the estimate
between echoes follows the clock, see :meth:`PlaybackLedger.heard_ms`).

A mark sent just before an item's first chunk echoes when that item starts to play. At the end of an
item the filter tail and the last partial frame are flushed, padded with mu-law silence. On barge-in,
:meth:`Playout.interrupt` clears Twilio's buffer, says where to truncate each item, and resets the
downward filter so the interrupted tail does not leak into the next response.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.core.audio import MULAW_SILENCE, AudioConverter
from service.core.commands import Command
from service.core.playback import PlaybackLedger, Truncation
from service.wire import twilio

FRAME_MS = twilio.FRAME_MS
FRAME_BYTES = twilio.FRAME_BYTES
CHUNK_MS = 100
"""The longest media message (five frames): the unit of the ledger between two echoes."""
CHUNK_BYTES = CHUNK_MS * twilio.BYTES_PER_MS
SILENCE_BYTE = bytes([MULAW_SILENCE])


@dataclass(frozen=True, slots=True)
class Interruption:
    """What a barge-in sends: Twilio's ``clear``, then the truncations for the model.

    ``heard`` has every item that still had audio to play, with the model ms of it the caller heard
    (the truncation point, or 0 for an item of which nothing was heard).
    """

    clear: twilio.SendClear
    truncations: list[Truncation]
    heard: dict[str, int]


class Playout:
    """One call's outbound audio, from model deltas to marked Twilio frames."""

    def __init__(self, stream_sid: str, transcoder: AudioConverter, ledger: PlaybackLedger) -> None:
        self.stream_sid = stream_sid
        self.ledger = ledger
        self.frames_sent = 0
        self._audio = transcoder
        self._pending = bytearray()  # mu-law not yet a whole frame
        self._item: str | None = None  # the item whose audio is being sent

    @property
    def playing(self) -> bool:
        """Is agent audio queued at Twilio, playing, or waiting here to be sent?"""
        return self.ledger.has_unplayed() or bool(self._pending)

    def audio(self, item_id: str, response_id: str, pcm16_24k: bytes, now: float) -> list[Command]:
        commands: list[Command] = []
        if self._item is not None and self._item != item_id:
            commands += self.finish(self._item, now)
        item = self.ledger.add_generated(item_id, response_id, len(pcm16_24k))
        if self._item is None:
            self._item = item_id
            if item.sent_ms == 0:
                commands.append(twilio.SendMark(self.stream_sid, self.ledger.start_mark(item_id)))
        self._pending += self._audio.to_caller(pcm16_24k)
        return commands + self._frames(item_id, now)

    def finish(self, item_id: str, now: float) -> list[Command]:
        """The item's audio is complete: flush the filter tail and the last frame, padded with silence."""
        self.ledger.finish(item_id)
        if self._item != item_id:
            return []
        self._pending += self._audio.flush_to_caller()
        self._pending += SILENCE_BYTE * (-len(self._pending) % FRAME_BYTES)
        commands = self._frames(item_id, now)
        self._item = None
        return commands

    def tones(self, item_id: str, mulaw: bytes, now: float) -> list[Command]:
        """Keypad tones (8 kHz mu-law), after whatever audio is being sent, marked like an item's."""
        commands: list[Command] = self.finish(self._item, now) if self._item is not None else []
        ms = -(-len(mulaw) // twilio.BYTES_PER_MS)
        self.ledger.add_tones(item_id, ms)
        commands.append(twilio.SendMark(self.stream_sid, self.ledger.start_mark(item_id)))
        self._pending += mulaw + SILENCE_BYTE * (-len(mulaw) % FRAME_BYTES)
        return commands + self._frames(item_id, now)

    def interrupt(self, now: float) -> Interruption:
        """Barge-in at ``now``: clear Twilio, truncate what was not heard, forget what is pending."""
        heard = dict.fromkeys(self.ledger.unplayed_items(), 0)
        truncations = self.ledger.interrupt(now)
        heard.update((t.item_id, t.audio_end_ms) for t in truncations)
        self._audio.reset_to_caller()
        self._pending.clear()
        self._item = None
        return Interruption(twilio.SendClear(self.stream_sid), truncations, heard)

    def _frames(self, item_id: str, now: float) -> list[Command]:
        """The whole frames pending, as media messages of at most CHUNK_MS, each followed by its mark."""
        commands: list[Command] = []
        pending = self._pending
        while len(pending) >= FRAME_BYTES:
            size = min(CHUNK_BYTES, len(pending) - len(pending) % FRAME_BYTES)
            chunk = bytes(pending[:size])
            del pending[:size]
            commands.append(twilio.SendMedia(self.stream_sid, chunk))
            ms = size // twilio.BYTES_PER_MS
            commands.append(twilio.SendMark(self.stream_sid, self.ledger.frame_sent(item_id, ms, now)))
            self.frames_sent += size // FRAME_BYTES
        return commands
