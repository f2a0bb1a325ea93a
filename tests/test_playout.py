"""Playout: model audio to marked 20 ms Twilio frames, flushes, and interruption."""

from __future__ import annotations

from service.core.audio import Transcoder
from service.core.playback import PlaybackLedger
from service.core.playout import Playout
from service.wire import twilio

SID = "MZ" + "3" * 32


def pcm(ms: int) -> bytes:
    return b"\x10\x00" * 24 * ms


def kinds(commands: list[twilio.Command]) -> list[str]:
    return [type(c).__name__ for c in commands]


def test_a_new_item_flushes_the_previous_one_first() -> None:
    playout = Playout(SID, Transcoder(), PlaybackLedger())
    first = playout.audio("a", "r", pcm(30), 0.0)
    assert kinds(first) == ["SendMark", "SendMedia", "SendMark"]  # start mark, one whole frame and its mark
    second = playout.audio("b", "r", pcm(20), 0.0)
    # a's last 10 ms plus the filter tail, padded to a frame, then b's start mark and first frame
    assert kinds(second) == ["SendMedia", "SendMark", "SendMark", "SendMedia", "SendMark"]
    names = [c.name for c in second if isinstance(c, twilio.SendMark)]
    assert names[0].startswith("a:30:") and names[1].startswith("b:0:")
    assert all(len(c.payload) == 160 for c in first + second if isinstance(c, twilio.SendMedia))


def test_finishing_an_item_that_is_not_playing_sends_nothing() -> None:
    playout = Playout(SID, Transcoder(), PlaybackLedger())
    playout.audio("a", "r", pcm(40), 0.0)
    assert playout.finish("other", 0.0) == []
    assert playout.playing


def test_interrupt_clears_and_forgets_pending_audio() -> None:
    ledger = PlaybackLedger()
    playout = Playout(SID, Transcoder(), ledger)
    out = playout.audio("a", "r", pcm(70), 0.0)
    assert kinds(out) == ["SendMark", "SendMedia", "SendMark"]  # 60 ms of whole frames in one message
    for mark in [c for c in out if isinstance(c, twilio.SendMark)]:
        ledger.echo(mark.name, 1.0)
    cut = playout.interrupt(1.0)
    assert cut.clear == twilio.SendClear(SID)
    assert [(t.item_id, t.audio_end_ms) for t in cut.truncations] == [("a", 60)]
    assert not playout.playing
    assert kinds(playout.audio("b", "r2", pcm(20), 1.0))[0] == "SendMark"  # starts afresh


def test_audio_goes_out_in_chunks_of_at_most_100_ms_as_soon_as_it_arrives() -> None:
    playout = Playout(SID, Transcoder(), PlaybackLedger())
    out = playout.audio("a", "r", pcm(330), 0.0)
    media = [c for c in out if isinstance(c, twilio.SendMedia)]
    assert [len(m.payload) for m in media] == [800, 800, 800, 160]  # 320 ms of whole frames, 10 ms left
    marks = [c.name for c in out if isinstance(c, twilio.SendMark)]
    assert [m.split(":")[1] for m in marks] == ["0", "100", "200", "300", "320"]
    assert playout.frames_sent == 16
    tail = playout.finish("a", 0.5)
    assert [len(c.payload) for c in tail if isinstance(c, twilio.SendMedia)] == [160]  # 10 ms + padding
