"""The cost of a call, line by line, against figures computed by hand from realtime-ga.md §13."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from service.core.cost import LINES, PRICES, Cost, ModelPrice, TranscriptionPrice, cached_split, cost_usd
from service.wire.realtime import Usage

# 10,000 input tokens (2,000 text, 8,000 audio), 5,000 of them cached; 3,000 output (1,000 text, 2,000 audio).
USAGE = Usage(
    input_tokens=10_000,
    output_tokens=3_000,
    input_text_tokens=2_000,
    input_audio_tokens=8_000,
    cached_tokens=5_000,
    output_text_tokens=1_000,
    output_audio_tokens=2_000,
)


def test_the_table_is_dated_and_has_the_reference_prices() -> None:
    assert PRICES.date == "2026-11"
    assert "realtime-ga.md" in PRICES.source
    assert PRICES.models["gpt-realtime-2.1"] == ModelPrice(4.00, 0.40, 24.00, 32.00, 0.40, 64.00)
    assert PRICES.models["gpt-realtime-2"] == PRICES.models["gpt-realtime-2.1"]
    assert PRICES.models["gpt-realtime-2.1-mini"] == ModelPrice(0.60, 0.06, 2.40, 10.00, 0.30, 20.00)
    assert PRICES.models["gpt-realtime-1.5"] == ModelPrice(4.00, 0.40, 16.00, 32.00, 0.40, 64.00)
    assert PRICES.transcription["gpt-realtime-whisper"] == TranscriptionPrice(per_minute=0.017)
    assert "gpt-4o-mini-transcribe" not in PRICES.transcription  # not in the reference: never guessed


def test_a_call_on_gpt_realtime_2_1_by_hand() -> None:
    cost = cost_usd(
        "gpt-realtime-2.1",
        USAGE,
        transcription_seconds=90.0,
        transcription_tokens=0,
        transcription_model="gpt-realtime-whisper",
        twilio_per_minute=0.0085,
        duration_s=125.0,
    )
    # Cached 5,000 split in proportion to the input (2,000 : 8,000): 1,000 text, 4,000 audio.
    assert cost.text_in == pytest.approx(1_000 * 4.00 / 1e6)  # 0.004
    assert cost.cached_text_in == pytest.approx(1_000 * 0.40 / 1e6)  # 0.0004
    assert cost.audio_in == pytest.approx(4_000 * 32.00 / 1e6)  # 0.128
    assert cost.cached_audio_in == pytest.approx(4_000 * 0.40 / 1e6)  # 0.0016
    assert cost.text_out == pytest.approx(1_000 * 24.00 / 1e6)  # 0.024
    assert cost.audio_out == pytest.approx(2_000 * 64.00 / 1e6)  # 0.128
    assert cost.transcription == pytest.approx(1.5 * 0.017)  # 90 s = 1.5 min: 0.0255
    assert cost.twilio_minutes == 3  # 125 s: three started minutes
    assert cost.twilio == pytest.approx(3 * 0.0085)  # 0.0255
    assert cost.total == pytest.approx(0.337)  # 0.286 + 0.0255 + 0.0255
    assert cost.complete and cost.model_known and cost.cached_split_estimated
    assert cost.prices_date == "2026-11"


def test_mini_prices_a_million_of_each() -> None:
    usage = Usage(2_000_000, 2_000_000, 1_000_000, 1_000_000, 0, 1_000_000, 1_000_000)
    cost = cost_usd("gpt-realtime-2.1-mini", usage)
    assert (cost.text_in, cost.audio_in, cost.text_out, cost.audio_out) == (0.60, 10.00, 2.40, 20.00)
    assert (cost.cached_text_in, cost.cached_audio_in) == (0.0, 0.0)
    assert cost.total == pytest.approx(33.00)
    assert not cost.cached_split_estimated
    assert cost.twilio is None and cost.twilio_minutes == 0  # no Twilio price configured: no line


def test_cached_tokens_are_a_subset_of_the_input_never_billed_twice() -> None:
    all_cached = Usage(1_000, 0, 0, 1_000, 1_000, 0, 0)
    cost = cost_usd("gpt-realtime-1.5", all_cached)
    assert cost.audio_in == 0.0
    assert cost.cached_audio_in == pytest.approx(1_000 * 0.40 / 1e6)
    assert cost.total == pytest.approx(0.0004)


def test_gpt_realtime_1_5_text_out_is_cheaper() -> None:
    usage = Usage(0, 1_000_000, 0, 0, 0, 1_000_000, 0)
    assert cost_usd("gpt-realtime-1.5", usage).total == pytest.approx(16.00)
    assert cost_usd("gpt-realtime-2", usage).total == pytest.approx(24.00)


@dataclass(frozen=True, slots=True)
class SplitUsage(Usage):
    """A Usage that says how its cached tokens split (``cached_tokens_details`` on the wire)."""

    cached_text_tokens: int = 0
    cached_audio_tokens: int = 0


def test_a_cached_split_given_by_the_usage_is_used_as_is() -> None:
    usage = SplitUsage(
        10_000, 0, 2_000, 8_000, 5_000, 0, 0, cached_text_tokens=2_000, cached_audio_tokens=3_000
    )
    assert cached_split(usage) == (2_000, 3_000, False)
    cost = cost_usd("gpt-realtime-2.1-mini", usage)
    assert cost.text_in == 0.0
    assert cost.cached_text_in == pytest.approx(2_000 * 0.06 / 1e6)
    assert cost.audio_in == pytest.approx(5_000 * 10.00 / 1e6)
    assert cost.cached_audio_in == pytest.approx(3_000 * 0.30 / 1e6)
    assert not cost.cached_split_estimated


def test_an_unknown_model_gives_no_lines_and_a_flag_not_a_crash() -> None:
    cost = cost_usd("my-azure-deployment", USAGE, 60.0, 0, "gpt-realtime-whisper", 0.01, 61.0)
    assert [getattr(cost, line) for line in LINES[:6]] == [None] * 6
    assert cost.total is None
    assert cost.unknown == ("model",)
    assert not cost.model_known and not cost.complete
    assert cost.transcription == pytest.approx(0.017)  # the lines that are known are still there
    assert cost.twilio == pytest.approx(0.02)
    assert cost.to_json()["model_known"] is False


def test_a_dated_snapshot_is_priced_like_its_model_and_mini_is_not_2_1() -> None:
    assert cost_usd("gpt-realtime-2.1-2026-11-05", USAGE).total == cost_usd("gpt-realtime-2.1", USAGE).total
    assert cost_usd("gpt-realtime-2.1-mini", USAGE).total != cost_usd("gpt-realtime-2.1", USAGE).total
    assert cost_usd("gpt-realtime-2.1-preview", USAGE).total is None
    assert cost_usd("gpt-realtime", USAGE).unknown == ("model",)  # deprecated, not in the table


def test_transcription_without_a_price_is_an_unknown_line() -> None:
    cost = cost_usd("gpt-realtime-2.1", Usage(), 30.0, 1_200, "gpt-4o-mini-transcribe")
    assert cost.transcription is None
    assert cost.unknown == ("transcription",)
    assert cost.total == 0.0  # the known lines; the flag says it is partial
    assert not cost.complete


def test_transcription_priced_from_configuration() -> None:
    table = PRICES.with_transcription("gpt-4o-mini-transcribe", TranscriptionPrice(per_million_tokens=3.00))
    cost = cost_usd("gpt-realtime-2.1", Usage(), 30.0, 10_000, "gpt-4o-mini-transcribe", table=table)
    assert cost.transcription == pytest.approx(0.03)
    assert cost.complete
    assert "gpt-4o-mini-transcribe" not in PRICES.transcription  # the table is a value: not changed


def test_no_transcription_used_costs_nothing_whatever_the_model() -> None:
    assert cost_usd("gpt-realtime-2.1", Usage(), 0.0, 0, None).transcription == 0.0
    assert cost_usd("gpt-realtime-2.1", Usage(), 0.0, 0, "unknown-model").transcription == 0.0
    assert cost_usd("gpt-realtime-2.1", Usage(), 5.0, 0, None).unknown == ("transcription",)


@pytest.mark.parametrize(
    ("duration_s", "minutes"), [(0.0, 0), (0.5, 1), (60.0, 1), (60.001, 2), (3600.0, 60)]
)
def test_twilio_bills_started_minutes(duration_s: float, minutes: int) -> None:
    cost = cost_usd("gpt-realtime-2.1", Usage(), twilio_per_minute=0.0085, duration_s=duration_s)
    assert cost.twilio_minutes == minutes
    assert cost.twilio == pytest.approx(minutes * 0.0085)


def test_cost_json_has_every_line_and_the_date() -> None:
    payload = cost_usd("gpt-realtime-2.1", USAGE, 0.0, 0, None, 0.0085, 10.0).to_json()
    assert set(LINES) <= set(payload)
    assert payload["currency"] == "USD"
    assert payload["prices_date"] == "2026-11"
    assert (
        payload["total"]
        == payload["text_in"]
        + payload["cached_text_in"]
        + payload["audio_in"]
        + payload["cached_audio_in"]
        + payload["text_out"]
        + payload["audio_out"]
        + payload["transcription"]
        + payload["twilio"]
    )
    assert payload["unknown"] == []


def test_cost_is_a_frozen_value() -> None:
    cost = cost_usd("gpt-realtime-2.1", USAGE)
    assert isinstance(cost, Cost)
    with pytest.raises(AttributeError):
        cost.total = 0.0  # type: ignore[misc]
