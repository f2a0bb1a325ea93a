"""Everything that can happen to a call, as one closed union of frozen values.

The bridge builds these from its sockets and timers, the recorder writes them, the replay reads them
back, and :meth:`service.core.call.Call.handle` takes them (with ``now``) one at a time::

    StreamAccepted                         the Twilio socket was accepted (the call's first input)
    TwilioMessage(event, text)             a message from Twilio, parsed (``text``: as received)
    TwilioClosed                           the Twilio socket is gone
    StartAuthorized(agent) | StartRejected(reason)   the verdict on ``start`` the call asked for
    ModelOpened(link, wall_s)              model socket ``link`` is open (``wall_s``: epoch seconds)
    ModelMessage(link, event, text)        a message from model socket ``link``, parsed
    ModelClosed(link, code, detail, http_status)    model socket ``link`` closed or failed to open
    TimerFired                             the deadline the call asked for has passed
    ToolResult(call_id, output, outcome, duration_ms)   an HTTP tool the call ran has answered
    Shutdown                               the service is stopping and the drain is over: end politely
    MachineDetected(answered_by)           an outbound call's answering-machine verdict (Twilio's AMD)

Model sockets are numbered by the call (``link``), so that an input from a socket the call has
already replaced is recognised and ignored. ``text`` fields are for the recorder only: the call reads
the parsed ``event``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from service.core.agent import Agent
from service.wire import realtime, twilio


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    """The Twilio media socket was accepted."""


# Hot path: not frozen (a frozen dataclass pays object.__setattr__ per field, ~1 us a message);
# treated as immutable all the same.
@dataclass(slots=True)
class TwilioMessage:
    event: twilio.Event
    text: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class TwilioClosed:
    """The Twilio socket closed (the caller hung up, or the connection dropped)."""


@dataclass(frozen=True, slots=True)
class StartAuthorized:
    """The ``start`` message's token was good: the call runs ``agent``."""

    agent: Agent


@dataclass(frozen=True, slots=True)
class StartRejected:
    reason: str


@dataclass(frozen=True, slots=True)
class ModelOpened:
    link: int
    wall_s: float
    """Wall-clock time (epoch seconds) at the opening: ``session.expires_at`` is on that clock."""


# Hot path: not frozen (a frozen dataclass pays object.__setattr__ per field, ~1 us a message);
# treated as immutable all the same.
@dataclass(slots=True)
class ModelMessage:
    link: int
    event: realtime.Event
    text: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ModelClosed:
    """Model socket ``link`` closed, was aborted, or could not be opened.

    ``code`` is the close code received (None: no close frame, or the socket never opened);
    ``http_status`` the HTTP answer when the upgrade was refused.
    """

    link: int
    code: int | None
    detail: str
    http_status: int | None = None


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool call's result: ``output`` is the text given to the model (JSON: the tool's answer, or
    ``{"error": ...}``); ``outcome`` says how it went (``ok``, ``timeout``, ``http_503``...)."""

    call_id: str
    output: str = field(repr=False)
    outcome: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The service is stopping and the call outlived the drain: it ends (the caller is told why)."""


@dataclass(frozen=True, slots=True)
class MachineDetected:
    """Twilio's answering-machine detection on an outbound call: ``answered_by`` is ``human``,
    ``machine_start``, ``machine_end_beep``, ``machine_end_silence``, ``machine_end_other``, ``fax`` or
    ``unknown``."""

    answered_by: str


@dataclass(frozen=True, slots=True)
class TimerFired:
    """``now`` has reached the call's :meth:`~service.core.call.Call.next_deadline`."""


Input: TypeAlias = (
    StreamAccepted
    | TwilioMessage
    | TwilioClosed
    | StartAuthorized
    | StartRejected
    | ModelOpened
    | ModelMessage
    | ModelClosed
    | TimerFired
    | ToolResult
    | Shutdown
    | MachineDetected
)
