"""What a call cost, in USD, from a dated price table. Pure: no clock, no I/O.

    cost = cost_usd("gpt-realtime-2.1", usage, transcription_seconds=42.0, transcription_tokens=0,
                    transcription_model="gpt-realtime-whisper", twilio_per_minute=0.0085, duration_s=95.2)
    cost.total            # USD, or None when the model has no price
    cost.unknown          # the lines that had usage but no price ("model", "transcription")

Billing rules (realtime-ga.md §9 and §13): billing is per response and every response re-reads the
conversation, so the usage summed over a call's responses is what was billed; ``cached_tokens`` are a
**subset** of the input tokens: billed at the cached price, and only the rest at the full price. Input
transcription is billed apart (per minute of audio or per token, by model). Twilio's minutes are a
separate, configurable line (``twilio_per_minute``; None leaves it out), billed per started minute.

When the usage does not say how the cached tokens split between text and audio (``realtime.Usage`` has
one ``cached_tokens`` today), they are split in proportion to the uncached input and the cost carries
``cached_split_estimated``. A ``Usage`` that grows ``cached_text_tokens`` / ``cached_audio_tokens``
(``input_token_details.cached_tokens_details`` on the wire) is used as is.

The post-call analysis (a text model, :mod:`service.core.analysis`) is a line of its own, ``analysis``:
``text_cost_usd`` prices its usage from ``TEXT_PRICES`` (cached input tokens are a subset of the input,
reasoning tokens a subset of the output) and ``Cost.with_analysis`` adds it to the call's cost. A text
model without a price makes that line unknown (``cost.unknown`` names ``analysis``), never guessed.

To update the prices: edit ``PRICES`` / ``TEXT_PRICES`` below (and their date and source);
``PriceTable.with_*`` adds or overrides an entry at run time (e.g. a transcription model priced from
configuration).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from service.wire import realtime

__all__ = [
    "LINES",
    "PRICES",
    "TEXT_PRICES",
    "Cost",
    "ModelPrice",
    "PriceTable",
    "TextCost",
    "TextPrice",
    "TranscriptionPrice",
    "cost_usd",
    "text_cost_usd",
]

PER_MILLION = 1_000_000
LINES = (
    "text_in",
    "cached_text_in",
    "audio_in",
    "cached_audio_in",
    "text_out",
    "audio_out",
    "transcription",
    "twilio",
    "analysis",
)
"""The cost lines, in the order they are shown."""
_MODEL_LINES = LINES[:6]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per 1M tokens."""

    text_in: float
    text_cached: float
    text_out: float
    audio_in: float
    audio_cached: float
    audio_out: float


@dataclass(frozen=True, slots=True)
class TranscriptionPrice:
    """Input transcription: USD per minute of audio, or per 1M tokens (one of the two)."""

    per_minute: float | None = None
    per_million_tokens: float | None = None


@dataclass(frozen=True, slots=True)
class TextPrice:
    """A text model (the post-call analysis): USD per 1M tokens."""

    input: float
    cached_input: float
    output: float


@dataclass(frozen=True, slots=True)
class PriceTable:
    date: str
    """When these prices were read (``YYYY-MM``): kept with every cost computed from them."""
    source: str
    models: Mapping[str, ModelPrice]
    transcription: Mapping[str, TranscriptionPrice] = field(default_factory=dict)
    text: Mapping[str, TextPrice] = field(default_factory=dict)
    text_date: str = ""
    """When the text models' prices were read (they come from another page than the Realtime ones)."""

    def with_text(self, name: str, price: TextPrice) -> PriceTable:
        return replace(self, text={**self.text, name: price})

    def text_price(self, model: str) -> TextPrice | None:
        price = self.text.get(model)
        if price is None and _is_dated(model):
            price = self.text.get(model[:-11])
        return price

    def with_model(self, name: str, price: ModelPrice) -> PriceTable:
        return replace(self, models={**self.models, name: price})

    def with_transcription(self, name: str, price: TranscriptionPrice) -> PriceTable:
        return replace(self, transcription={**self.transcription, name: price})

    def model_price(self, model: str) -> ModelPrice | None:
        """The price of ``model``, or of the model a dated snapshot name (``…-2026-11-05``) belongs to."""
        price = self.models.get(model)
        if price is None and _is_dated(model):
            price = self.models.get(model[:-11])
        return price


# Text models for the post-call analysis, USD per 1M tokens (input, cached input, output), as listed on
# developers.openai.com/api/docs/pricing (Standard tier) when these models were added (gpt-4.1 family:
# April 2025), cross-checked in May 2026 against github/docs data/tables/copilot/models-and-pricing.yml
# and Sraleik/undetermini PRICING.md. A model missing here is priced "unknown" (PriceTable.with_text).
TEXT_PRICES = {
    "gpt-4.1": TextPrice(2.00, 0.50, 8.00),
    "gpt-4.1-mini": TextPrice(0.40, 0.10, 1.60),
    "gpt-4.1-nano": TextPrice(0.10, 0.025, 0.40),
    "gpt-4o": TextPrice(2.50, 1.25, 10.00),
    "gpt-4o-mini": TextPrice(0.15, 0.075, 0.60),
    "gpt-5-mini": TextPrice(0.25, 0.025, 2.00),
}

# Prices of November 2026, USD per 1M tokens (whisper: per minute of audio).
# Source: /work/shared/reference/realtime-ga.md §13, from developers.openai.com/api/docs/models/
# gpt-realtime-2.1 (and -mini, -2, -1.5) and developers.openai.com/api/docs/guides/realtime-costs.
# gpt-4o-mini-transcribe (the agents' default transcription model) has no price in that reference: it is an
# unknown line until configured (PriceTable.with_transcription).
PRICES = PriceTable(
    date="2026-11",
    source="realtime-ga.md §13 (developers.openai.com/api/docs/models, guides/realtime-costs)",
    models={
        "gpt-realtime-2.1": ModelPrice(4.00, 0.40, 24.00, 32.00, 0.40, 64.00),
        "gpt-realtime-2": ModelPrice(4.00, 0.40, 24.00, 32.00, 0.40, 64.00),
        "gpt-realtime-2.1-mini": ModelPrice(0.60, 0.06, 2.40, 10.00, 0.30, 20.00),
        "gpt-realtime-1.5": ModelPrice(4.00, 0.40, 16.00, 32.00, 0.40, 64.00),
    },
    transcription={
        "gpt-realtime-whisper": TranscriptionPrice(per_minute=0.017),
    },
    text=TEXT_PRICES,
    text_date="2026-05",
)


@dataclass(frozen=True, slots=True)
class TextCost:
    """What one text-model request cost, in USD (None: the model has no known price)."""

    model: str
    prices_date: str
    input: float | None
    cached_input: float | None
    output: float | None
    total: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "currency": "USD",
            "prices_date": self.prices_date,
            "model": self.model,
            "input": self.input,
            "cached_input": self.cached_input,
            "output": self.output,
            "total": self.total,
        }


def text_cost_usd(
    model: str, input_tokens: int, cached_tokens: int, output_tokens: int, *, table: PriceTable = PRICES
) -> TextCost:
    """A Responses API request's cost: cached tokens are part of the input (billed at the cached price,
    the rest at the full one); reasoning tokens are part of the output."""
    price = table.text_price(model)
    if price is None:
        return TextCost(model, table.text_date, None, None, None, None)
    cached = min(max(cached_tokens, 0), max(input_tokens, 0))
    fresh = _usd(max(input_tokens, 0) - cached, price.input)
    reused = _usd(cached, price.cached_input)
    out = _usd(max(output_tokens, 0), price.output)
    return TextCost(model, table.text_date, fresh, reused, out, round(fresh + reused + out, 6))


@dataclass(frozen=True, slots=True)
class Cost:
    """A call's cost by line, in USD. A line is None when it had usage but no known price."""

    model: str
    prices_date: str
    text_in: float | None
    cached_text_in: float | None
    audio_in: float | None
    cached_audio_in: float | None
    text_out: float | None
    audio_out: float | None
    transcription: float | None
    twilio: float | None
    """None when no Twilio price is configured (not counted, and not "unknown")."""
    total: float | None
    """The sum of the known lines; None when the model has no price (the bulk of the cost is missing)."""
    unknown: tuple[str, ...] = ()
    """What had usage but no price: ``model`` and/or ``transcription``."""
    cached_split_estimated: bool = False
    twilio_minutes: int = 0
    analysis: float | None = None
    """The post-call analysis (a text model); None when there was none, or its price is unknown."""

    def with_analysis(self, cost: TextCost | None) -> Cost:
        """This cost with the analysis' line (None: no analysis was billed; no line)."""
        if cost is None:
            return self
        if cost.total is None:
            return replace(self, analysis=None, unknown=(*self.unknown, "analysis"))
        total = None if self.total is None else round(self.total + cost.total, 6)
        return replace(self, analysis=cost.total, total=total)

    @property
    def model_known(self) -> bool:
        return "model" not in self.unknown

    @property
    def complete(self) -> bool:
        return not self.unknown

    def to_json(self) -> dict[str, Any]:
        return {
            "currency": "USD",
            "prices_date": self.prices_date,
            "model": self.model,
            **{line: getattr(self, line) for line in LINES},
            "total": self.total,
            "model_known": self.model_known,
            "unknown": list(self.unknown),
            "cached_split_estimated": self.cached_split_estimated,
            "twilio_minutes": self.twilio_minutes,
        }


def cost_usd(
    model: str,
    usage: realtime.Usage,
    transcription_seconds: float = 0.0,
    transcription_tokens: int = 0,
    transcription_model: str | None = None,
    twilio_per_minute: float | None = None,
    duration_s: float = 0.0,
    *,
    table: PriceTable = PRICES,
) -> Cost:
    """The cost of one call's summed usage, line by line (see the module's docstring for the rules)."""
    unknown: list[str] = []
    cached_text, cached_audio, estimated = cached_split(usage)
    lines: dict[str, float | None] = dict.fromkeys(_MODEL_LINES)
    price = table.model_price(model)
    if price is None:
        unknown.append("model")
    else:
        text_in = max(usage.input_text_tokens - cached_text, 0)
        audio_in = max(usage.input_audio_tokens - cached_audio, 0)
        lines.update(
            text_in=_usd(text_in, price.text_in),
            cached_text_in=_usd(cached_text, price.text_cached),
            audio_in=_usd(audio_in, price.audio_in),
            cached_audio_in=_usd(cached_audio, price.audio_cached),
            text_out=_usd(usage.output_text_tokens, price.text_out),
            audio_out=_usd(usage.output_audio_tokens, price.audio_out),
        )
    transcription = _transcription(table, transcription_model, transcription_seconds, transcription_tokens)
    if transcription is None:
        unknown.append("transcription")
    minutes = math.ceil(duration_s / 60) if duration_s > 0 else 0
    twilio = None if twilio_per_minute is None else round(minutes * twilio_per_minute, 6)
    known = [v for v in (*lines.values(), transcription, twilio) if v is not None]
    total = None if price is None else round(sum(known), 6)
    return Cost(
        model=model,
        prices_date=table.date,
        text_in=lines["text_in"],
        cached_text_in=lines["cached_text_in"],
        audio_in=lines["audio_in"],
        cached_audio_in=lines["cached_audio_in"],
        text_out=lines["text_out"],
        audio_out=lines["audio_out"],
        transcription=transcription,
        twilio=twilio,
        total=total,
        unknown=tuple(unknown),
        cached_split_estimated=estimated and price is not None,
        twilio_minutes=minutes if twilio_per_minute is not None else 0,
    )


def cached_split(usage: realtime.Usage) -> tuple[int, int, bool]:
    """``(cached text, cached audio, estimated)``: from the usage when it says, else in proportion."""
    cached = max(usage.cached_tokens, 0)
    text = getattr(usage, "cached_text_tokens", None)
    audio = getattr(usage, "cached_audio_tokens", None)
    if isinstance(text, int) and isinstance(audio, int):
        return text, audio, False
    if cached == 0:
        return 0, 0, False
    text_in, audio_in = max(usage.input_text_tokens, 0), max(usage.input_audio_tokens, 0)
    if text_in + audio_in == 0:
        return cached, 0, True
    cached = min(cached, text_in + audio_in)
    cached_text = min(round(cached * text_in / (text_in + audio_in)), text_in)
    return cached_text, cached - cached_text, True


def _transcription(table: PriceTable, model: str | None, seconds: float, tokens: int) -> float | None:
    if seconds <= 0 and tokens <= 0:
        return 0.0
    price = table.transcription.get(model) if model else None
    if price is None:
        return None
    if price.per_minute is not None:
        return round(max(seconds, 0.0) / 60 * price.per_minute, 6)
    if price.per_million_tokens is not None:
        return _usd(max(tokens, 0), price.per_million_tokens)
    return None


def _usd(tokens: int, per_million: float) -> float:
    return round(tokens * per_million / PER_MILLION, 6)


def _is_dated(model: str) -> bool:
    """``name-YYYY-MM-DD``."""
    tail = model[-11:]
    return (
        len(model) > 11
        and tail[0] == "-"
        and tail[5] == "-"
        and tail[8] == "-"
        and (tail[1:5] + tail[6:8] + tail[9:]).isdigit()
    )
