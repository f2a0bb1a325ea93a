"""What a model session is told: the agent as a ``session.update``, the greeting, and the conversation
so far, replayed to a new session after a reconnect or a rollover. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from service.core.agent import Agent
from service.core.conversation import Turn
from service.wire import realtime

CHARS_PER_TOKEN = 4
"""A rough, deliberately generous token estimate for English text (OpenAI's rule of thumb)."""
ITEM_OVERHEAD_TOKENS = 4


def session_for(agent: Agent) -> dict[str, Any]:
    """The ``session.update`` body for ``agent``."""
    td = agent.turn_detection
    turn_detection: dict[str, Any] = {
        "type": td.type,
        "threshold": td.threshold,
        "prefix_padding_ms": td.prefix_padding_ms,
        "silence_duration_ms": td.silence_duration_ms,
        "create_response": td.create_response,
        "interrupt_response": td.interrupt_response,
    }
    if td.idle_timeout_ms is not None:
        turn_detection["idle_timeout_ms"] = td.idle_timeout_ms
    return realtime.session_config(
        instructions=agent.instructions,
        voice=agent.voice_param,
        turn_detection=turn_detection,
        transcription_model=agent.transcription_model,
        noise_reduction=agent.noise_reduction,
    )


def greeting_instructions(greeting: str) -> str:
    return f'Greet the caller by saying exactly this, and nothing else: "{greeting}"'


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN) + ITEM_OVERHEAD_TOKENS


def message_item(turn: Turn) -> dict[str, Any] | None:
    """A turn as a GA ``conversation.item.create`` item (text only), or None if nothing of it was heard."""
    text = turn.heard_text
    if not text:
        return None
    if turn.role == "caller":
        return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}


def context_items(turns: Iterable[Turn], budget_tokens: int) -> list[dict[str, Any]]:
    """The conversation for a new session: heard text of each turn, in order, newest kept first.

    Turns with no text (transcription off, or nothing heard) are left out; when the whole does not fit
    in ``budget_tokens``, the oldest turns are dropped.
    """
    kept: list[dict[str, Any]] = []
    spent = 0
    for turn in reversed(list(turns)):
        item = message_item(turn)
        if item is None:
            continue
        cost = estimate_tokens(turn.heard_text)
        if spent + cost > budget_tokens:
            break
        spent += cost
        kept.append(item)
    kept.reverse()
    return kept
