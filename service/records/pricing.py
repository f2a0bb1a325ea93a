"""Which prices a store applies: the dated table, Twilio's per-minute price, extra transcription prices.

    pricing = pricing_from_env(os.environ)

    TWILIO_PRICE_PER_MINUTE   optional, USD per started minute (e.g. 0.0085): the Twilio line; unset: no line
    TRANSCRIPTION_PRICES      optional, input transcription prices missing from the table, comma-separated:
                              ``gpt-4o-mini-transcribe=3.00/1M`` (USD per 1M tokens) or
                              ``whisper-1=0.006/min`` (USD per minute of audio)

Without a price, a call's transcription line is unknown (``cost.unknown`` names it), never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from service.core.analysis import AnalysisResult, analysis_cost
from service.core.cost import PRICES, Cost, PriceTable, TextCost, TranscriptionPrice, cost_usd
from service.core.record import CallRecord
from service.records.errors import RecordsConfigError

__all__ = ["Pricing", "pricing_from_env"]


@dataclass(frozen=True, slots=True)
class Pricing:
    table: PriceTable = PRICES
    twilio_per_minute: float | None = None

    def cost(
        self,
        record: CallRecord,
        transcription_model: str | None = None,
        analysis: AnalysisResult | None = None,
    ) -> Cost:
        """The call's cost; with ``analysis``, its line included."""
        return cost_usd(
            record.model,
            record.usage,
            record.transcription_seconds,
            record.transcription_tokens,
            transcription_model,
            self.twilio_per_minute,
            record.duration_s,
            table=self.table,
        ).with_analysis(self.analysis_cost(analysis))

    def analysis_cost(self, analysis: AnalysisResult | None) -> TextCost | None:
        """The post-call analysis' cost (None: there was none, or nothing billed that is known)."""
        return analysis_cost(analysis, self.table)


def pricing_from_env(env: Mapping[str, str], table: PriceTable = PRICES) -> Pricing:
    """Pricing from ``TWILIO_PRICE_PER_MINUTE`` and ``TRANSCRIPTION_PRICES`` (RecordsConfigError)."""
    problems: list[str] = []
    twilio: float | None = None
    raw = env.get("TWILIO_PRICE_PER_MINUTE", "").strip()
    if raw:
        twilio = _price(raw)
        if twilio is None:
            problems.append(f"TWILIO_PRICE_PER_MINUTE must be a price in USD (e.g. 0.0085), not {raw!r}")
    for entry in filter(None, (e.strip() for e in env.get("TRANSCRIPTION_PRICES", "").split(","))):
        model, _, price_text = entry.partition("=")
        amount_text, _, unit = price_text.strip().partition("/")
        amount = _price(amount_text)
        unit = unit.strip().lower()
        if not model.strip() or amount is None or unit not in ("1m", "min"):
            problems.append(
                f"TRANSCRIPTION_PRICES: {entry!r} is not MODEL=USD/1M or MODEL=USD/min "
                "(e.g. gpt-4o-mini-transcribe=3.00/1M)"
            )
            continue
        price = (
            TranscriptionPrice(per_minute=amount)
            if unit == "min"
            else TranscriptionPrice(per_million_tokens=amount)
        )
        table = table.with_transcription(model.strip(), price)
    if problems:
        raise RecordsConfigError("; ".join(problems))
    return Pricing(table=table, twilio_per_minute=twilio)


def _price(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
