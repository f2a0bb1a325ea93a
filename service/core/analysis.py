"""Post-call analysis with a text model: the Responses API request, and its answer. Pure: no I/O.

    body = request_body(record, agent.analysis)     # POST {OPENAI_API_BASE_URL}/responses, as JSON
    result = parse_response(json_reply, config)     # Analysis, or AnalysisError raised (``reason``)
    result = failure_of(status, json_reply)         # a non-2xx answer, as a reason (no message text)

The request (``openai.types.responses.ResponseCreateParams``)::

    {"model": "gpt-4.1-mini", "instructions": "...", "store": false, "max_output_tokens": 2000,
     "input": [{"type": "message", "role": "user", "content": "Caller: ...\\nAgent: ..."}],
     "text": {"format": {"type": "json_schema", "name": "call_analysis", "strict": true,
                         "schema": {"type": "object", "additionalProperties": false,
                                    "required": ["summary", "success", "fields"],
                                    "properties": {"summary": {"type": "string"},
                                                   "success": {"type": ["boolean", "null"]},
                                                   "fields": {...one property per custom field...}}}}}}

``success`` and ``fields`` are asked only when the agent sets them. Strict structured outputs want every
property ``required`` and ``additionalProperties: false`` at every level; a field's value is a string, a
number, a boolean or null (its description says which). The transcript is the turns as the caller heard
them (an interrupted agent turn: the part heard), labelled ``Caller:`` / ``Agent:``; one that is too
long keeps its beginning and its end.

The answer (``openai.types.responses.Response``): ``status`` ``completed``; ``output`` items of type
``message`` whose ``content`` parts of type ``output_text`` hold the JSON text (a ``refusal`` part is a
refusal); ``usage`` ``{input_tokens, input_tokens_details: {cached_tokens}, output_tokens,
output_tokens_details: {reasoning_tokens}, total_tokens}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.core.agent import AnalysisConfig
from service.core.cost import PRICES, PriceTable, TextCost, text_cost_usd
from service.core.record import CallRecord
from service.errors import ServiceError

__all__ = [
    "FORMAT_NAME",
    "MAX_TRANSCRIPT_CHARS",
    "Analysis",
    "AnalysisError",
    "AnalysisFailed",
    "AnalysisResult",
    "TextUsage",
    "analysis_cost",
    "failure_of",
    "parse_response",
    "request_body",
    "response_schema",
    "transcript_text",
]

FORMAT_NAME = "call_analysis"
MAX_TRANSCRIPT_CHARS = 60_000
"""About 15k tokens; a longer transcript keeps its first and last halves of this."""
MAX_OUTPUT_TOKENS = 2_000
FIELD_TYPES = ["string", "number", "boolean", "null"]
INSTRUCTIONS = (
    "You analyse a phone call between a caller and a voice agent, from its transcript (the caller's and "
    "the agent's turns, as the caller heard them). Answer in the JSON format given.\n"
    "- summary: what the call was about and how it ended, in one to three sentences, in the language of "
    "the call."
)


class AnalysisError(ServiceError):
    """The model's answer could not be used. ``reason`` says why (never the transcript or the answer)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"post-call analysis: {reason}")


@dataclass(frozen=True, slots=True)
class TextUsage:
    """A Responses API ``usage``: cached tokens are part of the input, reasoning tokens of the output."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Analysis:
    model: str
    summary: str = field(repr=False)
    success: bool | None
    """None when the agent sets no success criterion (or the model could not tell)."""
    fields: Mapping[str, Any] = field(repr=False)
    usage: TextUsage | None
    """None when the answer carried no usage (its cost is then unknown)."""
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class AnalysisFailed:
    model: str
    error: str
    usage: TextUsage | None = None
    """What a failed request still billed (an answer that came but could not be used), if known."""


AnalysisResult = Analysis | AnalysisFailed


# --- the request ------------------------------------------------------------------------------------


def transcript_text(record: CallRecord, max_chars: int = MAX_TRANSCRIPT_CHARS) -> str:
    """The conversation as heard: ``Caller: …`` / ``Agent: …`` lines (tool turns left out)."""
    lines: list[str] = []
    for turn in record.transcript:
        if turn.role not in ("caller", "agent"):
            continue
        text = turn.heard_text if turn.interrupted and turn.heard_text is not None else turn.text
        text = " ".join(text.split())
        if turn.interrupted:
            text += " [interrupted]" if text else "[interrupted before a word was heard]"
        if text:
            lines.append(f"{'Caller' if turn.role == 'caller' else 'Agent'}: {text}")
    whole = "\n".join(lines)
    if len(whole) <= max_chars:
        return whole
    half = max_chars // 2
    left = len(whole) - 2 * half
    return f"{whole[:half]}\n[… {left} characters left out …]\n{whole[-half:]}"


def response_schema(config: AnalysisConfig) -> dict[str, Any]:
    """The strict JSON schema of the answer (``text.format.schema``)."""
    properties: dict[str, Any] = {
        "summary": {"type": "string", "description": "What the call was about and how it ended."}
    }
    if config.success is not None:
        properties["success"] = {
            "type": ["boolean", "null"],
            "description": "Whether the call succeeded by the criterion given; null if the call cannot tell.",
        }
    if config.fields:
        properties["fields"] = {
            "type": "object",
            "properties": {
                name: {"type": FIELD_TYPES, "description": description}
                for name, description in config.fields.items()
            },
            "required": list(config.fields),
            "additionalProperties": False,
        }
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def instructions(config: AnalysisConfig) -> str:
    parts = [INSTRUCTIONS]
    if config.success is not None:
        parts.append(
            f"- success: true if the call succeeded by this criterion, false if not, null if the "
            f"transcript cannot tell. The criterion: {config.success}"
        )
    if config.fields:
        parts.append("- fields: extract each from the call; null when the call does not say:")
        parts += [f"  - {name}: {description}" for name, description in config.fields.items()]
    return "\n".join(parts)


def request_body(record: CallRecord, config: AnalysisConfig) -> dict[str, Any]:
    """The body of ``POST /responses`` that analyses ``record``'s transcript."""
    return {
        "model": config.model,
        "instructions": instructions(config),
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": "The call's transcript:\n\n" + (transcript_text(record) or "(nothing was said)"),
            }
        ],
        "text": {
            "format": {
                "type": "json_schema",
                "name": FORMAT_NAME,
                "schema": response_schema(config),
                "strict": True,
            }
        },
        "max_output_tokens": MAX_OUTPUT_TOKENS,
        "store": False,
    }


# --- the answer -------------------------------------------------------------------------------------


def usage_of(body: Mapping[str, Any]) -> TextUsage | None:
    """The ``usage`` of a Responses object (None when it has none)."""
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        return None
    input_details = usage.get("input_tokens_details")
    output_details = usage.get("output_tokens_details")
    return TextUsage(
        input_tokens=_count(usage.get("input_tokens")),
        cached_tokens=_count(input_details.get("cached_tokens") if isinstance(input_details, Mapping) else 0),
        output_tokens=_count(usage.get("output_tokens")),
        reasoning_tokens=_count(
            output_details.get("reasoning_tokens") if isinstance(output_details, Mapping) else 0
        ),
    )


def parse_response(body: Any, config: AnalysisConfig) -> Analysis:
    """The analysis in a Responses object; ``AnalysisError`` when there is none to use."""
    if not isinstance(body, Mapping) or body.get("object") != "response":
        raise AnalysisError("the answer is not a response object")
    status = body.get("status")
    if status != "completed":
        details = body.get("incomplete_details")
        why = details.get("reason") if isinstance(details, Mapping) else None
        raise AnalysisError(f"the response is {status}" + (f" ({why})" if isinstance(why, str) else ""))
    texts: list[str] = []
    for item in body.get("output") or ():
        if not isinstance(item, Mapping) or item.get("type") != "message":
            continue  # reasoning items and the like
        for part in item.get("content") or ():
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "refusal":
                raise AnalysisError("the model refused")
            if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
    if not texts:
        raise AnalysisError("the response has no output_text")
    try:
        answer = json.loads("".join(texts))
    except (ValueError, RecursionError):
        raise AnalysisError("the output_text is not JSON") from None
    if not isinstance(answer, dict):
        raise AnalysisError("the output_text is not a JSON object")
    summary = answer.get("summary")
    if not isinstance(summary, str):
        raise AnalysisError("the answer has no summary (a string)")
    success = answer.get("success") if config.success is not None else None
    if success is not None and not isinstance(success, bool):
        raise AnalysisError("success is not a boolean or null")
    fields: dict[str, Any] = {}
    if config.fields:
        raw = answer.get("fields")
        if not isinstance(raw, dict):
            raise AnalysisError("the answer has no fields (an object)")
        for name in config.fields:
            value = raw.get(name)
            if value is not None and not isinstance(value, str | int | float | bool):
                raise AnalysisError(f"field {name} is not a string, number, boolean or null")
            fields[name] = value
    response_id = body.get("id")
    return Analysis(
        model=config.model,
        summary=summary.strip(),
        success=success,
        fields=fields,
        usage=usage_of(body),
        response_id=response_id if isinstance(response_id, str) else None,
    )


def failure_of(status: int, body: Any) -> str:
    """A non-2xx answer as a reason: the status and OpenAI's error ``code`` (or ``type``); the message
    is left out (it may echo a part of the key)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    code = None
    if isinstance(error, Mapping):
        code = error.get("code") or error.get("type")
    shown = isinstance(code, str) and code.isprintable() and len(code) <= 64
    return f"HTTP {status}" + (f" {code}" if shown else "")


def analysis_cost(result: AnalysisResult | None, table: PriceTable = PRICES) -> TextCost | None:
    """What the analysis' request cost (None: no analysis, or no usage to price)."""
    usage = result.usage if result is not None else None
    if result is None or usage is None:
        return None
    tokens = (usage.input_tokens, usage.cached_tokens, usage.output_tokens)
    return text_cost_usd(result.model, *tokens, table=table)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
