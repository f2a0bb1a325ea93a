"""What a call asks the runtime to do: the peers' own commands, and a few control commands.

Peer commands are the wire modules' values: ``twilio.SendMedia`` / ``SendMark`` / ``SendClear`` go to the
Twilio socket; a model command is wrapped in :class:`ToModel`, which names the model socket (``link``)
it is for, because during a rollover two sockets are open at once. The runtime executes commands in
the order given; :mod:`service.runtime.routing` turns the peer ones into wire text, once, for the bridge
and the replay alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from service.core.agent import Tool, Transfer
from service.wire import realtime, twilio


# Hot path: not frozen (a frozen dataclass pays object.__setattr__ per field, ~1 us a message);
# treated as immutable all the same.
@dataclass(slots=True)
class ToModel:
    """Send ``command`` on model socket ``link``."""

    link: int
    command: realtime.Command


@dataclass(frozen=True, slots=True)
class OpenModel:
    """Open model socket ``link`` for ``model`` after ``delay_s`` (0: at once); report
    :class:`~service.core.inputs.ModelOpened` or :class:`~service.core.inputs.ModelClosed`."""

    link: int
    model: str
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class CloseModel:
    """Close model socket ``link`` (replaced, or no longer wanted). Nothing more is reported about it."""

    link: int


@dataclass(frozen=True, slots=True)
class Authorize:
    """Check the stream token of ``start`` (the clock and the single-use register live outside the
    core); answer with :class:`~service.core.inputs.StartAuthorized` or ``StartRejected``."""

    start: twilio.Start


@dataclass(frozen=True, slots=True)
class Hangup:
    """After the stream, hang up (the agent ended the call)."""


@dataclass(frozen=True, slots=True)
class Dial:
    """After the stream, connect the caller to ``transfer`` (``summary``: for the person who answers)."""

    transfer: Transfer
    summary: str = field(repr=False)


Action: TypeAlias = Hangup | Dial
"""What Twilio is told to do once the stream has ended (the answer to ``<Connect action>``)."""


@dataclass(frozen=True, slots=True)
class EndCall:
    """Close both sockets. ``twilio_close_code`` 1000 lets the call go on with ``<Connect action>``'s
    answer: ``action`` when the agent decided (hang up, transfer); else the apology."""

    reason: str
    twilio_close_code: int = 1000
    action: Action | None = None


@dataclass(frozen=True, slots=True)
class CallTool:
    """Run the agent's HTTP ``tool`` for the model's call ``call_id``; report a
    :class:`~service.core.inputs.ToolResult` (the call goes on meanwhile)."""

    call_id: str
    tool: Tool
    arguments: Mapping[str, Any] = field(repr=False)
    call_sid: str
    agent: str
    caller: str
    called: str


Control: TypeAlias = OpenModel | CloseModel | Authorize | EndCall | CallTool
Command: TypeAlias = twilio.Command | ToModel | Control
