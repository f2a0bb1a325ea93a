"""The agent's answers on their way to the caller: responses, playout, barge-in. Pure.

One :class:`Answers` per call. It follows the model's responses (the active one, its assistant items,
the ones a barge-in discarded, whose late audio is dropped), plays their audio out through
:class:`~service.core.playout.Playout`, measures first-audio latency (the caller's end of speech to the
echo of an answer's start mark), and keeps the conversation's agent turns cut to what was heard.

Barge-in policy (``shared/reference/lessons.md`` §1): on the caller's speech, clear Twilio's buffer,
cancel the response only when the server will not (``interrupt_response`` off), truncate each item at
what was heard, and drop whatever the interrupted response still sends. :meth:`Answers.drop` does the
same cleanup without a truncate when the session that was answering is gone (reconnect, rollover).
"""

from __future__ import annotations

import logging

from service.core.audio import AudioConverter
from service.core.commands import Command, ToModel
from service.core.conversation import Conversation
from service.core.playback import PlaybackLedger
from service.core.playout import Playout
from service.core.record import Timeline
from service.core.summary import CallStats
from service.wire import realtime

log = logging.getLogger(__name__)


class Answers:
    def __init__(
        self, ledger: PlaybackLedger, conversation: Conversation, stats: CallStats, timeline: Timeline
    ) -> None:
        self.ledger = ledger
        self._timeline = timeline
        self.active: str | None = None
        """The response in progress (``response.created`` seen, ``response.done`` not yet)."""
        self._conversation = conversation
        self._stats = stats
        self._playout: Playout | None = None  # from ``start``, once the stream is known
        self._items: list[str] = []  # assistant items of the active response
        self._discarded: set[str] = set()
        self._turn_ended_at: float | None = None
        self._awaiting_first_audio = False
        self.spoke = False
        """The latest response had audio of its own (a goodbye came with ``end_call``...)."""
        self._tones = 0

    def start(self, stream_sid: str, transcoder: AudioConverter, now: float) -> None:
        """The Twilio stream is known: answers can be played (latency counts from the call's start)."""
        self._playout = Playout(stream_sid, transcoder, self.ledger)
        self._turn_ended_at = now

    @property
    def playing(self) -> bool:
        return self._playout is not None and self._playout.playing

    @property
    def frames_sent(self) -> int:
        return self._playout.frames_sent if self._playout is not None else 0

    def busy(self) -> bool:
        """A response is being generated, or its audio is still to be heard."""
        return self.active is not None or self.playing

    # --- the model's events ------------------------------------------------------------------

    def created(self, response_id: str) -> None:
        self.active = response_id
        self._items = []
        self._awaiting_first_audio = True
        self.spoke = False

    def item_added(self, item_id: str, now: float) -> None:
        self._conversation.agent_item(item_id, now)
        self._items.append(item_id)

    def audio(self, delta: realtime.AudioDelta, now: float) -> list[Command]:
        self._conversation.agent_audio(delta.item_id, len(delta.audio) // realtime.BYTES_PER_MS, now)
        if delta.response_id in self._discarded:
            self._stats.dropped_deltas += 1
            return []
        if self._playout is None:
            log.warning("realtime: audio before the Twilio stream started skipped")
            return []
        if delta.response_id == self.active:
            self.spoke = True
            if delta.item_id not in self._items:
                self._items.append(delta.item_id)
        return self._playout.audio(delta.item_id, delta.response_id, delta.audio, now)

    def audio_done(self, item_id: str, response_id: str, now: float) -> list[Command]:
        if self._playout is None or response_id in self._discarded:
            self.ledger.finish(item_id)
            return []
        return self._playout.finish(item_id, now)

    def done(self, event: realtime.ResponseDone) -> None:
        self._stats.responses += 1
        self._stats.usage = self._stats.usage + event.usage
        if self.active == event.response_id:
            self.active = None
            self._items = []
        self._discarded.discard(event.response_id)
        if event.status == "failed":
            log.warning("realtime: response failed (%s)", event.reason)

    def caller_stopped(self, now: float) -> None:
        """The caller's turn ended: the next answer's latency counts from here."""
        self._turn_ended_at = now

    def mark(self, name: str, now: float) -> None:
        echo = self.ledger.echo(name, now)
        if echo is None:
            log.warning("twilio: echo of a mark we did not send skipped")
            return
        ended_at = self._turn_ended_at
        if echo.counted and echo.end_ms == 0 and self._awaiting_first_audio and ended_at is not None:
            self._awaiting_first_audio = False
            latency_ms = round((now - ended_at) * 1000)
            self._stats.first_audio_ms.append(latency_ms)
            self._timeline.note(now, "agent_heard", latency_ms=latency_ms)

    def tones(self, mulaw: bytes, now: float) -> list[Command]:
        """Play keypad tones (``send_dtmf``) after the audio already queued."""
        if self._playout is None:
            return []
        self._tones += 1
        return self._playout.tones(f"dtmf_{self._tones}", mulaw, now)

    # --- interruptions -----------------------------------------------------------------------

    def barge_in(self, now: float, link: int, *, server_cancels: bool) -> list[Command]:
        """The caller started speaking: stop the answer, and tell the model what was heard."""
        commands: list[Command] = []
        if self.active is not None:
            self._discarded.add(self.active)  # its late deltas are dropped
            self._awaiting_first_audio = False
            if not server_cancels:
                commands.append(ToModel(link, realtime.CancelResponse(self.active)))
        if self._playout is None or not self._playout.playing:
            self._cut_turns({})
            return commands
        cut = self._playout.interrupt(now)
        self._cut_turns(cut.heard)
        self._stats.barge_ins += 1
        heard_ms = sum(cut.heard.values())
        self._timeline.note(now, "barge_in", heard_ms=heard_ms, truncated=len(cut.truncations))
        self._stats.truncations += len(cut.truncations)
        truncates = [ToModel(link, realtime.TruncateItem(t.item_id, t.audio_end_ms)) for t in cut.truncations]
        # An item none of which was sent (the answer after a preamble) was never heard: it leaves the
        # conversation, or the model would take it as said.
        truncated = {t.item_id for t in cut.truncations}
        unheard = [item for item, ms in cut.heard.items() if ms == 0 and item not in truncated]
        deletes = [ToModel(link, realtime.DeleteItem(item)) for item in unheard]
        log.info("barge-in: cleared playback, %d truncated, %d deleted", len(truncates), len(deletes))
        return [cut.clear, *commands, *truncates, *deletes]

    def drop(self, now: float) -> list[Command]:
        """The session that was answering is gone: clear what is still queued at Twilio and keep in the
        conversation what was heard. Its responses are forgotten."""
        heard: dict[str, int] = {}
        commands: list[Command] = []
        if self._playout is not None and self._playout.playing:
            cut = self._playout.interrupt(now)
            heard = cut.heard
            commands.append(cut.clear)
        self._cut_turns(heard)
        self.active = None
        self._items = []
        self._discarded.clear()
        self._awaiting_first_audio = False
        self._turn_ended_at = None  # an answer resumed by the next session is not a turn's first audio
        return commands

    def _cut_turns(self, heard: dict[str, int]) -> None:
        """Mark the agent turns the caller stopped hearing: the active response's items (nothing heard
        unless the ledger says otherwise) and every item that still had audio to play."""
        for item_id, heard_ms in (dict.fromkeys(self._items, 0) | heard).items():
            self._conversation.agent_cut(item_id, heard_ms)
