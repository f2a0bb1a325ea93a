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
    session = realtime.session_config(
        instructions=agent.instructions,
        voice=agent.voice_param,
        turn_detection=turn_detection,
        transcription_model=agent.transcription_model,
        noise_reduction=agent.noise_reduction,
    )
    tools = tools_for(agent)
    if tools:
        session["tools"] = tools
        session["tool_choice"] = "auto"
    return session


def tools_for(agent: Agent) -> list[dict[str, Any]]:
    """``session.tools`` (flat GA shape): the agent's HTTP tools, its call control, its MCP servers."""
    tools: list[dict[str, Any]] = [
        {"type": "function", "name": t.name, "description": t.description, "parameters": dict(t.parameters)}
        for t in agent.tools
    ]
    if "end_call" in agent.call_control:
        tools.append(_function(
            "end_call",
            "End the phone call. Say goodbye first, in the same turn; the line is cut once the caller has "
            "heard it.",
            {"reason": {"type": "string", "description": "Why the call ends, in a few words."}},
            ["reason"],
        ))  # fmt: skip
    if agent.transfers:
        names = [t.name for t in agent.transfers]
        where = "; ".join(f"{t.name}: {t.description}" for t in agent.transfers)
        tools.append(_function(
            "transfer_call",
            "Transfer the caller to a person. Tell the caller first, in the same turn. "
            f"Destinations: {where}",
            {"destination": {"type": "string", "enum": names},
             "summary": {"type": "string", "description": "One sentence for the person who answers."}},
            ["destination", "summary"],
        ))  # fmt: skip
    if "send_dtmf" in agent.call_control:
        tools.append(_function(
            "send_dtmf",
            "Press keys on the phone keypad (for an automated phone menu): digits 0-9, * and #.",
            {"digits": {"type": "string", "pattern": "^[0-9*#A-D]{1,32}$"}},
            ["digits"],
        ))  # fmt: skip
    if agent.voicemail_tool:
        tools.append(_function(
            "voicemail",
            "Call this, and say nothing, as soon as you hear an answering machine or a voicemail greeting "
            "instead of a person (a recorded greeting, 'leave a message after the tone'). The message is "
            "left for you after the beep, then the call ends.",
            {},
            [],
        ))  # fmt: skip
    for server in agent.mcp:
        entry: dict[str, Any] = {
            "type": "mcp",
            "server_label": server.server_label,
            "server_url": server.server_url,
            "require_approval": server.require_approval,
        }
        if server.allowed_tools is not None:
            entry["allowed_tools"] = list(server.allowed_tools)
        if server.headers:
            entry["headers"] = dict(server.headers)
        tools.append(entry)
    return tools


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    }


def greeting_instructions(greeting: str) -> str:
    return f'Greet the caller by saying exactly this, and nothing else: "{greeting}"'


def voicemail_instructions(message: str) -> str:
    return f'You reached voicemail. Leave this message, word for word, and nothing else: "{message}"'


def tools_update(agent: Agent) -> dict[str, Any]:
    """A ``session.update`` body that changes only the tools (the ``voicemail`` tool withdrawn)."""
    return {"type": "realtime", "tools": tools_for(agent), "tool_choice": "auto"}


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN) + ITEM_OVERHEAD_TOKENS


def message_items(turn: Turn) -> list[dict[str, Any]]:
    """A turn as GA ``conversation.item.create`` items: a message (text only, as heard); a tool call and
    its output (an output only once there is one). Nothing for a turn of which nothing was heard."""
    if turn.role == "tool":
        call_id = turn.item_id
        call = {"type": "function_call", "call_id": call_id, "name": turn.name or "", "arguments": turn.text}
        if turn.output is None:
            return [call]
        return [call, {"type": "function_call_output", "call_id": call_id, "output": turn.output}]
    item = message_item(turn)
    return [item] if item is not None else []


def message_item(turn: Turn) -> dict[str, Any] | None:
    """A caller or agent turn as a GA message item (text only), or None if nothing of it was heard."""
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
        items = message_items(turn)
        if not items:
            continue
        cost = estimate_tokens(turn.heard_text + (turn.output or ""))
        if spent + cost > budget_tokens:
            break
        spent += cost
        kept.extend(reversed(items))
    kept.reverse()
    return kept
