"""The thin asyncio layer that runs one call: hand each input to :class:`~service.core.call.Call` and
execute the commands it returns, in order, at once.

Everything that happens to a call arrives as a callback in the event loop's thread (a message from
either socket, a socket opened or closed, the timer), so the call sees one ordered stream of
:mod:`~service.core.inputs` without a queue: each is handled to the end, its messages written to the
transports, before the next callback runs. That stream is also exactly what the recorder writes and
the replay feeds back.

    Twilio socket ──on_message──┐
    model sockets ──on_message──┼──> Bridge.handle(input) -> Call.handle(input, now) -> commands
    timer (call_later) ─────────┘        -> send text / open (task) / close / authorize / end

Two things wait, each in a task that reports back as an input: opening a model socket (connect, TLS,
handshake: ``ModelOpened`` or ``ModelClosed``) and an HTTP tool call (``ToolResult``). When the call
ends, its decision (hang up, transfer) goes to ``on_end`` before the Twilio socket is closed (Twilio
asks for it as soon as the stream ends), both sockets are closed, every task is cancelled (a tool still
running included) and the one summary line is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from service.core.call import Call
from service.core.commands import Authorize, CallTool, CloseModel, Command, EndCall, OpenModel
from service.core.inputs import (
    Input,
    ModelClosed,
    ModelMessage,
    ModelOpened,
    Shutdown,
    StartAuthorized,
    StartRejected,
    StreamAccepted,
    TimerFired,
    ToolResult,
    TwilioClosed,
    TwilioMessage,
)
from service.logs import call_id_var
from service.runtime.model import HandshakeRefused
from service.runtime.recorder import Recorder
from service.runtime.routing import Outgoing, Router
from service.runtime.wsock import OnClose, OnMessage
from service.wire import realtime, twilio

log = logging.getLogger(__name__)

REALTIME_CONNECT_TIMEOUT_S = 5.0
PAYLOAD_LOG_CHARS = 200
"""With LOG_PAYLOADS (and LOG_LEVEL=DEBUG), each message is logged as ``< peer text`` / ``> peer text``,
cut to this many characters (audio payloads are long and say nothing to a reader)."""


class TextSocket(Protocol):
    """What the bridge needs of a socket: send text messages (in one write), close; never raising."""

    def send_texts(self, texts: list[str]) -> None: ...
    def close(self, code: int = 1000, reason: str = "") -> None: ...


OpenModelSocket = Callable[[str, OnMessage, OnClose], Awaitable[TextSocket]]
"""Open a model socket for a model name; its messages and its end go to the callbacks given."""
Verdict = StartAuthorized | StartRejected
Authorizer = Callable[[twilio.Start], Verdict | Awaitable[Verdict]]
"""The verdict on a stream's ``start`` (reads the wall clock and the single-use token register): at once,
or after an await (a register shared through the database)."""
ToolCaller = Callable[[CallTool], Awaitable[ToolResult]]
"""Run an HTTP tool call; its result (never raises)."""
OnEnd = Callable[[Call, EndCall | None, bool], None]
"""The call has ended (``EndCall``: how, and what Twilio is to do next; then whether its stream token was
genuine, though maybe not yet claimed); called before the sockets close."""


class Bridge:
    """Runs one :class:`Call` between a Twilio socket and its model sockets."""

    def __init__(
        self,
        call: Call,
        twilio_socket: TextSocket,
        open_model: OpenModelSocket,
        authorize: Authorizer,
        *,
        recorder: Recorder | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        connect_timeout_s: float = REALTIME_CONNECT_TIMEOUT_S,
        log_payloads: bool = False,
        run_tool: ToolCaller | None = None,
        on_end: OnEnd | None = None,
        on_rate_limits: Callable[[realtime.RateLimits], None] | None = None,
    ) -> None:
        self.call = call
        self._twilio = twilio_socket
        self._open_model = open_model
        self._authorize = authorize
        self._recorder = recorder
        self._clock = clock
        self._wall_clock = wall_clock
        self._connect_timeout_s = connect_timeout_s
        self._router = Router()
        self._to_twilio: list[str] = []  # messages of the input being handled, written at its end
        self._to_models: dict[int, list[str]] = {}
        self._models: dict[int, TextSocket] = {}
        self._opening: dict[int, asyncio.Task[None]] = {}
        self._run_tool = run_tool
        self._on_end = on_end
        self._token_genuine = False  # the start's token passed its signature check
        self._on_rate_limits = on_rate_limits
        self._tools: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop = asyncio.get_running_loop()
        self._end: EndCall | None = None
        self.ended: asyncio.Event = asyncio.Event()
        self._log_payloads = log_payloads and log.isEnabledFor(logging.DEBUG)

    # --- inputs ----------------------------------------------------------------------------------

    def start(self) -> None:
        """The Twilio socket was accepted."""
        self.handle(StreamAccepted())

    def twilio_message(self, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        self.handle(TwilioMessage(twilio.parse(message), text))

    def twilio_closed(self, code: int | None, detail: str) -> None:
        self.handle(TwilioClosed())

    def _model_message(self, link: int, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        event = realtime.parse(message)
        if type(event) is realtime.RateLimits and self._on_rate_limits is not None:
            self._on_rate_limits(event)  # the account's budget: the service's business, not the call's
        self.handle(ModelMessage(link, event, text))

    def _model_closed(self, link: int, code: int | None, detail: str) -> None:
        self._models.pop(link, None)
        self.handle(ModelClosed(link, code, detail))

    def handle(self, event: Input) -> None:
        """One input, handled to the end: the call decides, its commands are carried out."""
        if self.ended.is_set():
            return
        now = self._clock()
        if self._recorder is not None:
            self._recorder.input(now, event)
        if self._log_payloads and isinstance(event, TwilioMessage | ModelMessage):
            peer = "twilio" if isinstance(event, TwilioMessage) else f"realtime#{event.link}"
            self._log_payload("<", peer, event.text)
        self._execute(self.call.handle(event, now), now)
        self._write()
        if self.call.ended:
            self._finish(now)
        else:
            self._arm_timer()

    def _write(self) -> None:
        """Write what the input produced: one write per socket (a 100 ms delta makes ten messages)."""
        if self._to_twilio:
            texts, self._to_twilio = self._to_twilio, []
            self._twilio.send_texts(texts)
        if self._to_models:
            batches, self._to_models = self._to_models, {}
            for link, texts in batches.items():
                socket = self._models.get(link)
                if socket is None:
                    log.warning("model socket %d not open: %d message(s) for it dropped", link, len(texts))
                else:
                    socket.send_texts(texts)

    # --- commands ------------------------------------------------------------------------------

    def _execute(self, commands: list[Command], now: float) -> None:
        route = self._router.route
        for command in commands:
            if self.ended.is_set():
                return
            out = route(command)
            if type(out) is Outgoing:  # the hot path: a message for a peer
                self._send(out, now)
                continue
            match out:
                case OpenModel(link=link, model=model, delay_s=delay_s):
                    task = self._loop.create_task(self._connect(link, model, delay_s))
                    self._opening[link] = task
                case CloseModel(link=link):
                    self._write()  # its last messages go before its close
                    if link in self._opening:
                        self._opening.pop(link).cancel()
                    if link in self._models:
                        self._models.pop(link).close(1000, "")
                case Authorize(start=start):
                    self._write()  # what came before goes first
                    # every later line of this connection carries the CallSid (set here, in the
                    # connection's own context: a task's would be a copy)
                    call_id_var.set(start.call_sid)
                    verdict = self._authorize(start)
                    self._token_genuine = not isinstance(verdict, StartRejected)
                    if isinstance(verdict, StartAuthorized | StartRejected):
                        self.handle(verdict)
                    else:
                        task = self._loop.create_task(self._await_verdict(start, verdict))
                        self._tools.add(task)  # cancelled with the call, like a tool
                        task.add_done_callback(self._tools.discard)
                case CallTool() as call:
                    if self._recorder is not None:
                        self._recorder.tool_call(now, call)
                    task = self._loop.create_task(self._call_tool(call))
                    self._tools.add(task)
                    task.add_done_callback(self._tools.discard)
                case EndCall() as end:
                    self._end = end  # the call has ended: _finish closes everything
                    return

    def _send(self, out: Outgoing, now: float) -> None:
        if self._recorder is not None:
            self._recorder.output(now, out)
        if self._log_payloads:
            self._log_payload(">", out.peer if out.peer == "twilio" else f"realtime#{out.link}", out.text)
        if out.peer == "twilio":
            self._to_twilio.append(out.text)
        else:
            self._to_models.setdefault(out.link, []).append(out.text)

    async def _connect(self, link: int, model: str, delay_s: float) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        # What the socket says before the call has heard that it opened (frames that came with the
        # handshake's response) waits here, so the call sees ModelOpened first.
        early: list[Callable[[], None]] | None = []

        def on_message(message: str | bytes) -> None:
            if early is not None:
                early.append(lambda: self._model_message(link, message))
            else:
                self._model_message(link, message)

        def on_close(code: int | None, detail: str) -> None:
            if early is not None:
                early.append(lambda: self._model_closed(link, code, detail))
            else:
                self._model_closed(link, code, detail)

        try:
            async with asyncio.timeout(self._connect_timeout_s):
                socket = await self._open_model(model, on_message, on_close)
        except HandshakeRefused as exc:
            log.error("model socket %d refused: HTTP %d", link, exc.status)
            self._opening.pop(link, None)
            self.handle(ModelClosed(link, None, f"HTTP {exc.status}", exc.status))
            return
        except (OSError, TimeoutError) as exc:
            log.error("model socket %d could not be opened: %s", link, type(exc).__name__)
            self._opening.pop(link, None)
            self.handle(ModelClosed(link, None, f"connect failed: {type(exc).__name__}"))
            return
        except Exception:  # the one supervisor point of a connection attempt: the call must hear of it
            log.exception("model socket %d: unexpected failure while opening", link)
            self._opening.pop(link, None)
            self.handle(ModelClosed(link, None, "connect failed: unexpected error"))
            return
        self._opening.pop(link, None)
        if self.ended.is_set():
            socket.close(1000, "")
            return
        self._models[link] = socket
        self.handle(ModelOpened(link, self._wall_clock()))
        pending, early = early or [], None
        for deliver in pending:
            deliver()

    async def _await_verdict(self, start: twilio.Start, pending: Awaitable[Verdict]) -> None:
        try:
            verdict = await pending
        except Exception:  # the call must hear of it, as a refusal
            log.exception("stream authorization failed")
            verdict = StartRejected("authorization failed")
        self.handle(verdict)

    async def _call_tool(self, call: CallTool) -> None:
        if self._run_tool is None:
            result = ToolResult(call.call_id, '{"error": "tools are not available"}', "error", 0)
        else:
            result = await self._run_tool(call)
        self.handle(result)

    # --- timer and end -----------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        """One timer for the call's next deadline. A deadline that moves later (every media frame moves
        the silence-injection one) leaves the timer as it is: when it fires early, the call does nothing
        and the timer is armed again for the new deadline. So a timer is armed a few times a second, not
        once per message."""
        deadline = self.call.next_deadline()
        armed = self._timer_at
        if deadline == armed or (armed is not None and deadline is not None and deadline > armed):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None
        if deadline is not None:
            delay = max(0.0, deadline - self._clock())
            self._timer = self._loop.call_later(delay, self._fire_timer)

    def _fire_timer(self) -> None:
        self._timer, self._timer_at = None, None
        self.handle(TimerFired())

    def hang_up(self) -> None:
        """End the call from outside, as if the Twilio socket had closed."""
        self.handle(TwilioClosed())

    def shut_down(self) -> None:
        """End the call because the service is stopping (the caller is told so)."""
        self.handle(Shutdown())

    def _finish(self, now: float) -> None:
        """The call has ended: log its summary, close its sockets, cancel what is still opening."""
        if self.ended.is_set():
            return
        self.ended.set()
        if self._timer is not None:
            self._timer.cancel()
        summary = self.call.summary(now)
        log.info("call summary %s", summary, extra={"summary": summary})
        if self._recorder is not None:
            self._recorder.close(summary)
        for task in (*self._opening.values(), *self._tools):
            task.cancel()
        self._opening.clear()
        for socket in self._models.values():
            with contextlib.suppress(Exception):
                socket.close(1000, "")
        self._models.clear()
        if self._on_end is not None:
            try:
                self._on_end(self.call, self._end, self._token_genuine)
            except Exception:  # its failure must not leave the sockets open
                log.exception("call end handler failed")
        code = self._end.twilio_close_code if self._end is not None else 1000
        self._twilio.close(code, "call ended")

    def _log_payload(self, arrow: str, peer: str, text: str) -> None:
        shown = text if len(text) <= PAYLOAD_LOG_CHARS else text[:PAYLOAD_LOG_CHARS] + "..."
        log.debug("%s %s %s", arrow, peer, shown)
