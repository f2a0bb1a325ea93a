"""What the call logic needs to know of an agent: the values of one validated entry of the agents file.

Pure data (frozen). :mod:`service.agents` reads, validates and reloads the file; the call core only
ever sees these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

NoiseReduction = Literal["near_field", "far_field"]


@dataclass(frozen=True, slots=True)
class TurnDetection:
    """Server VAD settings sent in ``session.audio.input.turn_detection``."""

    type: Literal["server_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Tool:
    """An HTTP function tool: the model calls it by ``name``; Dialtone POSTs the call to ``url``."""

    name: str
    description: str
    url: str
    parameters: Mapping[str, Any] = field(repr=False)
    timeout_ms: int = 5000
    filler: str | None = None
    """Said when the tool has not answered after ~700 ms (``One moment while I check that.``)."""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Sent with every request (``${VAR}`` already expanded: may hold secrets, never logged)."""


@dataclass(frozen=True, slots=True)
class McpServer:
    """An MCP server the model calls itself (OpenAI connects to it; Dialtone only declares it)."""

    server_label: str
    server_url: str
    allowed_tools: tuple[str, ...] | None = None
    require_approval: str = "never"
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class Transfer:
    """Where ``transfer_call`` may send the caller: a name the model picks, a number or SIP URI."""

    name: str
    description: str
    number: str | None = None
    sip: str | None = None
    whisper: str | None = None
    """Said to whoever answers before the caller is connected (with the agent's summary)."""
    caller_id: str | None = None
    timeout_s: int = 20
    fallback_message: str | None = None
    """Said to the caller when nobody answers, before hanging up (unless ``fallback_agent``)."""
    fallback_agent: str | None = None
    """When nobody answers, the caller goes back to this agent (its key: "default" or a number)."""


CALL_CONTROL = frozenset({"end_call", "send_dtmf"})
"""Built-in tools an agent may enable (``transfer_call`` comes with ``transfers``)."""
BUILTIN_TOOLS = CALL_CONTROL | {"transfer_call", "voicemail"}
"""Names an HTTP tool may not take (``voicemail`` is offered on outbound calls, in their first turns)."""


@dataclass(frozen=True, slots=True)
class Keypad:
    """What the caller's key presses do: ``model`` tells the model the digits; ``ignore`` drops them."""

    mode: Literal["model", "ignore"] = "model"
    terminator: str = "#"
    digit_timeout_ms: int = 2000
    max_digits: int = 16


DEFAULT_ANALYSIS_MODEL = "gpt-4.1-mini"


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """Post-call analysis with a text model (the Responses API), once the call has ended."""

    model: str = DEFAULT_ANALYSIS_MODEL
    success: str | None = field(default=None, repr=False)
    """What counts as a successful call (``The caller booked a table.``); None: no verdict asked."""
    fields: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Custom fields to extract: name (an identifier) -> what it holds, told to the model."""


@dataclass(frozen=True, slots=True)
class Agent:
    """One agent: what the model is told, how it sounds and when it takes its turn."""

    key: str
    instructions: str = field(repr=False)
    voice: str = "marin"
    greeting: str | None = field(default=None, repr=False)
    model: str | None = None
    turn_detection: TurnDetection = TurnDetection()
    transcription_model: str = "gpt-4o-mini-transcribe"
    noise_reduction: NoiseReduction | None = "near_field"
    tools: tuple[Tool, ...] = ()
    mcp: tuple[McpServer, ...] = ()
    call_control: frozenset[str] = frozenset()
    transfers: tuple[Transfer, ...] = ()
    keypad: Keypad = Keypad()
    post_call_webhook: str | None = field(default=None, repr=False)
    """Where each call's record is POSTed (signed) when it ends; None: the service's default, if any."""
    max_call_s: int | None = None
    """The longest an outbound call placed for this agent may last (Twilio's ``TimeLimit``)."""
    voicemail_message: str | None = field(default=None, repr=False)
    """Left after the beep when an answering machine takes an outbound call; then the agent hangs up."""
    voicemail_tool: bool = False
    """Per call: the model is offered the ``voicemail`` tool (an outbound call, in its first two turns)."""
    analysis: AnalysisConfig | None = None
    """Post-call analysis of the transcript (summary, success, custom fields); None: off."""

    @property
    def voice_param(self) -> str | dict[str, str]:
        """The GA ``audio.output.voice`` value: a name, or ``{"id": ...}`` for a custom voice."""
        return {"id": self.voice} if self.voice.startswith("voice_") else self.voice

    def tool(self, name: str) -> Tool | None:
        return next((t for t in self.tools if t.name == name), None)

    def transfer(self, name: str) -> Transfer | None:
        return next((t for t in self.transfers if t.name == name), None)
