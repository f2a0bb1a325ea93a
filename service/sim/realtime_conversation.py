"""The conversation of one simulated session: its items in order, the item operations a client may
ask for (create, delete, retrieve, truncate) with GA refusals, and what the model's turns cost.

Pure and synchronous: no socket and no clock. Each operation either changes the conversation and
returns its result, or returns the :class:`Problem` the GA server would answer and changes nothing.
Token counts are plausible, not exact: text is about four characters a token, input audio about
one token per 100 ms, output audio about one per 50 ms.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from service.sim.realtime_schema import Json, Problem

AUDIO_TOKENS_IN_PER_S = 10  # input audio: about one token per 100 ms
AUDIO_TOKENS_OUT_PER_S = 20  # output audio: about one token per 50 ms
RATE_LIMIT_TOKENS = 15_000_000


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def split_words(text: str) -> list[str]:
    """Words with their leading whitespace: joined back they give the text (transcript deltas)."""
    return re.findall(r"\s*\S+", text)


@dataclass(frozen=True, slots=True)
class Truncation:
    item_id: str
    audio_end_ms: int
    generated_ms: int  # the item's audio before the cut


#: Item types whose GA shape has neither ``object`` nor ``status``.
BARE_ITEM_TYPES = frozenset({"mcp_call", "mcp_list_tools"})


@dataclass(slots=True)
class Item:
    id: str
    type: str
    role: str | None
    content_type: str | None = None  # "input_audio", "output_audio", "input_text", ...
    transcript: str | None = None
    audio_ms: int = 0
    audio_bytes: int = 0
    status: str = "completed"
    payload: Json | None = None  # an item the client created (echoed as sent), or a tool item's fields

    def as_json(self, with_content: bool = True) -> Json:
        if self.payload is not None and self.type in BARE_ITEM_TYPES:
            return {**self.payload, "id": self.id}
        if self.payload is not None:
            return {**self.payload, "id": self.id, "object": "realtime.item", "status": self.status}
        content = [{"type": self.content_type, "transcript": self.transcript}] if with_content else []
        return {
            "id": self.id, "object": "realtime.item", "type": self.type, "status": self.status,
            "role": self.role, "content": content,
        }  # fmt: skip

    @property
    def text(self) -> str:
        """What the model reads of this item as text: a transcript, or a tool call's arguments and
        output."""
        if self.transcript:
            return self.transcript
        if self.payload is None:
            return ""
        return str(self.payload.get("arguments") or "") + str(self.payload.get("output") or "")


class Conversation:
    """The items, in order. ``user_turns`` counts committed user audio and user messages created by
    the client (the script picks replies by it); ``has_assistant_audio`` becomes true with the first
    audio delta of a response (the voice is fixed from then on)."""

    def __init__(self, conversation_id: str) -> None:
        self.id = conversation_id
        self.items: dict[str, Item] = {}
        self.order: list[str] = []
        self.user_turns = 0
        self.has_assistant_audio = False
        self._last_input_tokens = 0

    @property
    def last_item_id(self) -> str | None:
        return self.order[-1] if self.order else None

    def append(self, item: Item) -> str | None:
        """Add ``item`` at the end; return the id of the item before it."""
        previous = self.last_item_id
        self.items[item.id] = item
        self.order.append(item.id)
        return previous

    def commit_input_audio(self, item_id: str, audio_ms: int) -> tuple[Item, str | None]:
        """The committed input audio buffer as a user item; returns it and the previous item's id."""
        item = Item(item_id, "message", "user", "input_audio", audio_ms=audio_ms)
        previous = self.append(item)
        self.user_turns += 1
        return item, previous

    def create(
        self, raw: Json, item_id: str, previous_item_id: str | None
    ) -> tuple[Item, str | None] | Problem:
        """``conversation.item.create``: insert the client's item after ``previous_item_id`` (at the
        end if None); returns it and the id of the item actually before it."""
        if item_id in self.items:  # inferred wording
            return Problem("invalid_value", f"Item with id '{item_id}' already exists.", "item.id")
        if previous_item_id is not None and previous_item_id not in self.items:  # inferred wording
            message = f"Item with id '{previous_item_id}' not found."
            return Problem("invalid_value", message, "previous_item_id")
        content = raw.get("content") or [{}]
        first: Json = content[0] if isinstance(content[0], dict) else {}
        item = Item(item_id, str(raw["type"]), raw.get("role"), first.get("type"),
                    transcript=first.get("text", first.get("transcript")), payload=raw)  # fmt: skip
        index = self.order.index(previous_item_id) + 1 if previous_item_id is not None else len(self.order)
        previous = self.order[index - 1] if index > 0 else None
        self.order.insert(index, item_id)
        self.items[item_id] = item
        if item.role == "user":
            self.user_turns += 1
        return item, previous

    def function_call(self, call_id: str) -> Item | None:
        """The ``function_call`` item with this ``call_id`` (made by the model or created by the
        client), if the conversation still has it."""
        for item_id in self.order:
            item = self.items[item_id]
            if (
                item.type == "function_call"
                and item.payload is not None
                and item.payload.get("call_id") == call_id
            ):
                return item
        return None

    def delete(self, item_id: str) -> Problem | None:
        if item_id not in self.items:  # inferred wording
            message = f"Error deleting item: the item with id '{item_id}' does not exist."
            return Problem("item_delete_invalid_item_id", message, "item_id")
        del self.items[item_id]
        self.order.remove(item_id)
        return None

    def retrieve(self, item_id: str) -> Item | Problem:
        item = self.items.get(item_id)
        if item is None:  # inferred wording
            message = f"Error retrieving item: the item with id '{item_id}' does not exist."
            return Problem("item_retrieve_invalid_item_id", message, "item_id")
        return item

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> Truncation | Problem:
        """``conversation.item.truncate``: cut an assistant audio item (and its transcript, in
        proportion) to ``audio_end_ms``."""
        item = self.items.get(item_id)
        if item is None:  # code captured; wording inferred
            message = f"Error truncating item: the item with id '{item_id}' does not exist."
            return Problem("item_truncate_invalid_item_id", message, "item_id")
        if item.role != "assistant" or item.content_type != "output_audio" or item.audio_bytes == 0:
            return Problem("unsupported_content_type", "Only model output audio messages can be truncated")
        if content_index != 0:  # inferred wording
            message = f"Invalid 'content_index': item '{item_id}' has no content at index {content_index}."
            return Problem("invalid_value", message, "content_index")
        if audio_end_ms > item.audio_ms:
            return Problem(
                "invalid_value",
                f"Audio content of {item.audio_ms}ms is already shorter than {audio_end_ms}ms",
            )
        truncation = Truncation(item_id, audio_end_ms, item.audio_ms)
        if item.transcript and item.audio_ms:
            words = split_words(item.transcript)
            item.transcript = "".join(words[: math.ceil(len(words) * audio_end_ms / item.audio_ms)])
        item.audio_bytes = item.audio_bytes * audio_end_ms // item.audio_ms
        item.audio_ms = audio_end_ms
        return truncation

    # --- usage ---------------------------------------------------------------------------------

    def response_usage(self, instructions: str, outputs: Sequence[Item], output_audio_ms: float) -> Json:
        """Plausible GA usage of a response: the whole conversation but the response's own ``outputs``
        is input (tokens seen by the previous response count as cached); audio tokens from
        durations; a tool call's arguments and output count as text."""
        text_in = text_tokens(instructions)
        audio_in = 0
        own = {id(item) for item in outputs}
        for item_id in self.order:
            other = self.items[item_id]
            if id(other) in own:
                continue
            if other.content_type in ("input_audio", "output_audio"):
                audio_in += math.ceil(other.audio_ms * AUDIO_TOKENS_IN_PER_S / 1000)
            elif other.text:
                text_in += text_tokens(other.text)
        input_tokens = text_in + audio_in
        cached = min(self._last_input_tokens, input_tokens) // 64 * 64
        cached_text = min(cached, text_in)
        self._last_input_tokens = input_tokens
        audio_out = round(output_audio_ms * AUDIO_TOKENS_OUT_PER_S / 1000)
        text_out = sum(text_tokens(item.text) for item in outputs)
        return {
            "total_tokens": input_tokens + audio_out + text_out, "input_tokens": input_tokens,
            "output_tokens": audio_out + text_out,
            "input_token_details": {
                "text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0, "cached_tokens": cached,
                "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached - cached_text,
                                          "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }  # fmt: skip



def transcription_usage(item: Item) -> Json:
    """The usage of an input audio transcription (``...input_audio_transcription.completed``)."""
    audio_tokens = math.ceil(item.audio_ms * AUDIO_TOKENS_IN_PER_S / 1000)
    output_tokens = text_tokens(item.transcript or "")
    return {
        "type": "tokens", "total_tokens": audio_tokens + output_tokens, "input_tokens": audio_tokens,
        "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
        "output_tokens": output_tokens,
    }  # fmt: skip
