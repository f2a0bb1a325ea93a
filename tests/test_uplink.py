"""The caller's input clock: gaps filled once and within a budget, bad timestamps cost nothing."""

from __future__ import annotations

import logging

import pytest
from callkit import CALL, SID, Driver, media, sent

from service.core.call import CallConfig
from service.core.commands import EndCall
from service.core.uplink import MAX_FILL_PER_CALL_MS, MAX_GAP_FILL_MS, Uplink, is_quiet
from service.wire import realtime, twilio


def frames(uplink: Uplink, stamps: list[int | None], t0: float = 0.0, step_s: float = 0.02) -> int:
    """Feed 20 ms frames with these timestamps, one per ``step_s`` of wall time; mu-law bytes out."""
    return sum(len(uplink.frame(media(ts), t0 + i * step_s)) for i, ts in enumerate(stamps))


def test_contiguous_frames_pass_untouched_and_small_jitter_is_not_a_gap() -> None:
    up = Uplink()
    assert frames(up, [0, 20, 41, 59, 80]) == 5 * 160
    assert up.stats.media_gaps == 0 and up.stats.filled_ms == 0


def test_a_gap_is_filled_once() -> None:
    up = Uplink()
    assert frames(up, [0, 20, 100, 120, 140]) == 5 * 160 + 60 * 8
    assert up.stats.media_gaps == 1 and up.stats.filled_ms == 60


def test_a_timestamp_far_ahead_costs_one_bounded_fill_then_the_clock_is_re_anchored() -> None:
    up = Uplink()
    stamps = [0, 20, 1_000_000_000] + [1_000_000_000 + 20 * k for k in range(1, 750)]  # 15 s of audio
    total = frames(up, stamps)
    assert up.stats.filled_ms == MAX_GAP_FILL_MS and up.stats.clock_resets == 1
    assert total == len(stamps) * 160 + MAX_GAP_FILL_MS * 8


def test_fills_draw_on_a_budget_that_refills_with_wall_time() -> None:
    up = Uplink()
    frames(up, [0, 20, 10_020])  # a 10 s jump at once: the whole burst
    assert up.stats.filled_ms == 9_980
    up.frame(media(20_040), 0.1)  # another 10 s jump 0.06 s later: only what refilled since
    assert up.stats.filled_ms == 9_980 + 80  # 20 ms of burst left + 60 ms refilled
    up.frame(media(25_000), 5.1)  # 5 s of wall time later, a 4.9 s gap is real: filled whole
    assert up.stats.filled_ms == 9_980 + 80 + 4_940


def test_fills_per_call_are_capped() -> None:
    up = Uplink()
    ts, now = 0, 0.0
    up.frame(media(ts), now)
    for _ in range(200):  # 200 jumps of 10 s, each 10 s of wall time apart
        ts += 10_020
        now += 10.0
        up.frame(media(ts), now)
    assert up.stats.filled_ms == MAX_FILL_PER_CALL_MS


def test_a_timestamp_that_goes_back_re_anchors_without_fill() -> None:
    up = Uplink()
    assert frames(up, [5000, 5020, 100, 120, 140]) == 5 * 160
    assert up.stats.clock_resets == 1 and up.stats.filled_ms == 0


def test_bad_timestamps_keep_the_audio_and_warn_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    up = Uplink()
    with caplog.at_level(logging.WARNING):
        total = frames(up, [0] + [None] * 1000 + [20_020])  # 20 s of frames without a timestamp
    assert total == 1002 * 160  # nothing lost, nothing filled: the frames were contiguous
    assert up.stats.bad_timestamps == 1000 and up.stats.filled_ms == 0
    assert 1 <= len(caplog.records) <= 3


def test_in_a_call_a_jumping_clock_does_not_flood_the_model() -> None:
    d = Driver().live()
    appended = 0
    for i in range(750):  # 15 s of caller audio, the clock jumping 1e9 ms after the second frame
        ts = 20 * i if i < 2 else 1_000_000_000 + 20 * i
        appended += sum(len(c.audio) for c in sent(d.twilio(media(ts), 1.0 + i * 0.02), realtime.AppendAudio))
    assert appended == (750 * 160 + MAX_GAP_FILL_MS * 8) * 6


LOUD = bytes([0x10]) * 160  # about -9 dBFS
QUIET = bytes([0x7E]) * 160  # |sample| 8


def batched_driver() -> Driver:
    return Driver(config=CallConfig(quiet_batch_ms=100)).live()


def appends(commands: list) -> list[int]:  # type: ignore[type-arg]
    return [len(c.audio) // 6 // 8 for c in sent(commands, realtime.AppendAudio)]  # ms each


def test_quiet_audio_waits_up_to_100_ms_and_goes_in_one_append() -> None:
    d = batched_driver()
    out = [appends(d.twilio(media(20 * i, QUIET), 1.0 + i * 0.02)) for i in range(10)]
    assert out == [[], [], [], [], [100], [], [], [], [], [100]]
    assert is_quiet(QUIET) and not is_quiet(LOUD) and not is_quiet(QUIET[:-1] + LOUD[:1])


def test_a_loud_frame_goes_at_once_with_the_quiet_audio_before_it() -> None:
    d = batched_driver()
    d.twilio(media(0, QUIET), 1.0)
    d.twilio(media(20, QUIET), 1.02)
    assert appends(d.twilio(media(40, LOUD), 1.04)) == [40, 20]  # nothing waits behind speech


def test_while_the_vad_hears_the_caller_every_frame_goes_at_once() -> None:
    d = batched_driver()
    d.twilio(media(0, QUIET), 1.0)
    out = d.model(realtime.SpeechStarted("item_u", 0), 1.01)
    assert appends(out) == [20]  # the batch goes at the speech's start
    assert appends(d.twilio(media(20, QUIET), 1.02)) == [20]  # a pause inside an utterance
    d.model(realtime.SpeechStopped("item_u", 900), 1.9)
    assert appends(d.twilio(media(40, QUIET), 1.92)) == []


def test_quiet_audio_waiting_is_sent_when_the_call_ends_and_dropped_when_the_model_is_lost() -> None:
    d = batched_driver()
    d.twilio(media(0, QUIET), 1.0)
    ended = d.twilio(twilio.Stop(SID, CALL), 1.1)
    assert appends(ended) == [20] and isinstance(ended[-1], EndCall)
    lost = batched_driver()
    lost.twilio(media(0, QUIET), 1.0)
    assert appends(lost.closed(1, 1.1)) == [] and lost.call.uplink.stats.dropped_ms == 20
