"""The playback ledger: generations, clamps, and what counts as heard."""

from __future__ import annotations

from service.core.playback import PlaybackLedger, Truncation


def test_mark_names_round_trip_even_with_colons_in_item_ids() -> None:
    ledger = PlaybackLedger()
    ledger.add_generated("item:odd", "r", 48 * 40)
    name = ledger.frame_sent("item:odd", 20)
    echo = ledger.echo(name, 0.0)
    assert echo is not None and echo.item_id == "item:odd" and echo.end_ms == 20 and echo.counted


def test_foreign_mark_names_are_not_ours() -> None:
    ledger = PlaybackLedger()
    assert ledger.echo("hello", 0.0) is None
    assert ledger.echo("a:b:gx:m1", 0.0) is None


def test_echoes_from_before_a_clear_do_not_count() -> None:
    ledger = PlaybackLedger()
    ledger.add_generated("a", "r", 48 * 100)
    names = [ledger.frame_sent("a", 20) for _ in range(5)]
    ledger.echo(names[0], 0.0)
    assert ledger.interrupt(0.0) == [Truncation("a", 20)]
    later = ledger.echo(names[1], 0.0)
    assert later is not None and not later.counted
    assert not ledger.has_unplayed()


def test_truncation_is_clamped_to_generated_audio() -> None:
    ledger = PlaybackLedger(truncate_slack_ms=50)
    ledger.add_generated("a", "r", 48 * 30)
    first = ledger.frame_sent("a", 20)
    ledger.frame_sent("a", 20)
    ledger.echo(first, 0.0)
    assert ledger.interrupt(0.0) == [Truncation("a", 30)]


def test_items_heard_in_full_are_forgotten() -> None:
    ledger = PlaybackLedger()
    ledger.add_generated("a", "r", 48 * 20)
    name = ledger.frame_sent("a", 20)
    ledger.finish("a")
    ledger.echo(name, 0.0)
    assert ledger.item("a") is None and not ledger.has_unplayed()
    assert ledger.interrupt(0.0) == []


def test_playback_since_the_newest_echo_is_counted_up_to_one_frame() -> None:
    ledger = PlaybackLedger()
    ledger.add_generated("a", "r", 48 * 200)
    names = [ledger.frame_sent("a", 20) for _ in range(10)]
    ledger.echo(names[2], 1.000)  # 60 ms heard when this echo arrived
    item = ledger.item("a")
    assert item is not None
    assert ledger.heard_ms(item, 1.000) == 60
    assert ledger.heard_ms(item, 1.007) == 67
    assert ledger.heard_ms(item, 1.500) == 80  # never more than the frame after the echo
    assert ledger.interrupt(1.012) == [Truncation("a", 72)]


def test_nothing_is_added_when_nothing_was_queued_behind_the_echo() -> None:
    ledger = PlaybackLedger()
    ledger.add_generated("a", "r", 48 * 40)
    first = ledger.frame_sent("a", 20)
    ledger.echo(first, 1.0)
    item = ledger.item("a")
    assert item is not None and ledger.heard_ms(item, 1.5) == 20 + 0  # sent 20, heard 20: nothing queued


def test_between_echoes_the_chunk_playing_counts_from_when_it_was_sent_if_the_buffer_ran_dry() -> None:
    ledger = PlaybackLedger()
    ledger.add_generated("a", "r", 48 * 300)
    first = ledger.frame_sent("a", 100, now=1.0)
    ledger.echo(first, 1.1)  # played by 1.1; nothing else had been sent: Twilio's buffer ran dry
    ledger.frame_sent("a", 100, now=1.3)  # the next chunk arrives 200 ms later
    item = ledger.item("a")
    assert item is not None
    assert ledger.heard_ms(item, 1.35) == 150  # 50 ms of it since it was sent, not 100 since the echo
    assert ledger.heard_ms(item, 2.0) == 200  # never more than the chunk
