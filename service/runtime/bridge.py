"""The thin asyncio layer that runs one call: move messages, hand them to :class:`~service.core.call.Call`,
execute the commands it returns, in order.

Everything that happens to a call goes through one queue and one consumer loop, so the call sees a
single ordered stream of :mod:`~service.core.inputs` (which is also exactly what the recorder writes and
the replay feeds back):

    twilio reader ───┐
    model readers ───┼──> queue ──> loop: Call.handle(input, now) -> commands -> send / open / close / end
    timer (call_at) ─┘                    (one timer, re-armed at Call.next_deadline())

Model sockets are opened, read and closed here on the call's orders (``OpenModel`` / ``CloseModel``),
each by its own task; a socket's end is reported once, as ``ModelClosed`` (unless the call closed it).
Supervision: whatever way the call ends (a command, a closed socket, cancellation by Quart when Twilio
disconnects), ``finally`` cancels every task, closes every socket and logs the one summary line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from service.core.call import Call
from service.core.commands import Authorize, CloseModel, Command, EndCall, OpenModel
from service.core.inputs import (
    Input,
    ModelClosed,
    ModelMessage,
    ModelOpened,
    StartAuthorized,
    StartRejected,
    StreamAccepted,
    TimerFired,
    TwilioClosed,
    TwilioMessage,
)
from service.logs import call_id_var
from service.runtime.recorder import Recorder
from service.runtime.routing import Outgoing, Router
from service.wire import realtime, twilio

log = logging.getLogger(__name__)

REALTIME_CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
PAYLOAD_LOG_CHARS = 200
"""With LOG_PAYLOADS (and LOG_LEVEL=DEBUG), each message is logged as ``< peer text`` / ``> peer text``,
cut to this many characters (audio payloads are long and say nothing to a reader)."""


class SocketClosed(Exception):
    """Raised by a :class:`TwilioSocket` adapter when the peer has gone."""


class TwilioSocket(Protocol):
    """What the bridge needs of the accepted Twilio websocket (Quart's, or a test's).

    ``receive`` and ``send`` raise :class:`SocketClosed` once the peer has gone.
    """

    async def receive(self) -> str | bytes: ...
    async def send(self, data: str) -> None: ...
    async def close(self, code: int, reason: str = "") -> None: ...


class RealtimeSocket(Protocol):
    """What the bridge needs of the model websocket (a ``websockets`` client connection)."""

    async def recv(self) -> str | bytes: ...
    async def send(self, message: str) -> None: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


OpenRealtime = Callable[[str], Awaitable[RealtimeSocket]]
"""Open a model socket for a model name."""
Authorizer = Callable[[twilio.Start], StartAuthorized | StartRejected]
"""The verdict on a stream's ``start`` (reads the wall clock and the single-use token register)."""


class Bridge:
    """Runs one :class:`Call` between a Twilio socket and its model sockets."""

    def __init__(
        self,
        call: Call,
        twilio_ws: TwilioSocket,
        open_realtime: OpenRealtime,
        authorize: Authorizer,
        *,
        recorder: Recorder | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        connect_timeout_s: float = REALTIME_CONNECT_TIMEOUT_S,
        log_payloads: bool = False,
    ) -> None:
        self.call = call
        self._twilio = twilio_ws
        self._open_realtime = open_realtime
        self._authorize = authorize
        self._recorder = recorder
        self._clock = clock
        self._wall_clock = wall_clock
        self._connect_timeout_s = connect_timeout_s
        self._router = Router()
        self._queue: asyncio.Queue[Input] = asyncio.Queue()
        self._models: dict[int, RealtimeSocket] = {}
        self._model_tasks: dict[int, asyncio.Task[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._end: EndCall | None = None
        self._log_payloads = log_payloads and log.isEnabledFor(logging.DEBUG)

    async def run(self) -> None:
        """Run the call to its end. Never raises for a peer's misbehaviour; re-raises cancellation."""
        reader = asyncio.create_task(self._read_twilio(), name="twilio-reader")
        try:
            await self._handle(StreamAccepted())
            while self._end is None:
                await self._handle(await self._queue.get())
        finally:
            reader.cancel()
            await self._shutdown()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _handle(self, event: Input) -> None:
        now = self._clock()
        if self._recorder is not None:
            self._recorder.input(now, event)
        if self._log_payloads and isinstance(event, TwilioMessage | ModelMessage):
            peer = "twilio" if isinstance(event, TwilioMessage) else f"realtime#{event.link}"
            self._log_payload("<", peer, event.text)
        await self._execute(self.call.handle(event, now), now)
        self._arm_timer()

    async def _execute(self, commands: list[Command], now: float) -> None:
        for command in commands:
            if self._end is not None:
                return
            match self._router.route(command):
                case Outgoing() as out:
                    await self._send(out, now)
                case OpenModel(link=link, model=model, delay_s=delay_s):
                    task = asyncio.create_task(self._run_model(link, model, delay_s), name=f"model-{link}")
                    self._model_tasks[link] = task
                case CloseModel(link=link):
                    if link in self._model_tasks:
                        self._model_tasks.pop(link).cancel()
                case Authorize(start=start):
                    verdict = self._authorize(start)
                    if isinstance(verdict, StartAuthorized):
                        call_id_var.set(start.call_sid)  # every later line of this call carries it
                    await self._handle(verdict)
                case EndCall() as end:
                    self._end = end

    async def _send(self, out: Outgoing, now: float) -> None:
        if self._recorder is not None:
            self._recorder.output(now, out)
        if self._log_payloads:
            self._log_payload(">", out.peer if out.peer == "twilio" else f"realtime#{out.link}", out.text)
        if out.peer == "twilio":
            try:
                await self._twilio.send(out.text)
            except SocketClosed:
                self._queue.put_nowait(TwilioClosed())
            return
        ws = self._models.get(out.link)
        if ws is None:
            log.warning("model socket %d not open: a message for it was dropped", out.link)
            return
        with contextlib.suppress(ConnectionClosed):  # its reader reports the close
            await ws.send(out.text)

    def _arm_timer(self) -> None:
        """One timer for the call's next deadline, re-armed only when the deadline changes."""
        deadline = self.call.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None
        if deadline is not None:
            delay = max(0.0, deadline - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._fire_timer)

    def _fire_timer(self) -> None:
        self._timer, self._timer_at = None, None
        self._queue.put_nowait(TimerFired())

    async def _run_model(self, link: int, model: str, delay_s: float) -> None:
        put = self._queue.put_nowait
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                ws = await self._open_realtime(model)
        except InvalidStatus as exc:
            status = exc.response.status_code
            log.error("model socket %d refused: HTTP %d", link, status)
            put(ModelClosed(link, None, f"HTTP {status}", status))
            return
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            log.error("model socket %d could not be opened: %s", link, type(exc).__name__)
            put(ModelClosed(link, None, f"connect failed: {type(exc).__name__}"))
            return
        self._models[link] = ws
        try:
            put(ModelOpened(link, self._wall_clock()))
            while True:
                message = await ws.recv()
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                put(ModelMessage(link, realtime.parse(message), text))
        except ConnectionClosed as exc:
            frame = exc.rcvd
            detail = f"code {frame.code}" if frame is not None else "no close frame"
            put(ModelClosed(link, frame.code if frame is not None else None, detail))
        finally:
            self._models.pop(link, None)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await ws.close()

    async def _read_twilio(self) -> None:
        try:
            while True:
                text = await self._twilio.receive()
                shown = text if isinstance(text, str) else text.decode("utf-8", "replace")
                self._queue.put_nowait(TwilioMessage(twilio.parse(text), shown))
        except SocketClosed:
            pass
        self._queue.put_nowait(TwilioClosed())

    async def _shutdown(self) -> None:
        """End the call's bookkeeping first (no await: Quart may cancel this task when Twilio goes),
        then close the sockets."""
        now = self._clock()
        if self._timer is not None:
            self._timer.cancel()
        if not self.call.ended:
            self.call.handle(TwilioClosed(), now)
        summary = self.call.summary(now)
        log.info("call summary %s", summary, extra={"summary": summary})
        if self._recorder is not None:
            self._recorder.close(summary)
        tasks = list(self._model_tasks.values())
        for task in tasks:
            task.cancel()
        code = self._end.twilio_close_code if self._end is not None else 1000
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._twilio.close(code, "call ended")
        if tasks:
            await asyncio.wait(tasks)

    def _log_payload(self, arrow: str, peer: str, text: str) -> None:
        shown = text if len(text) <= PAYLOAD_LOG_CHARS else text[:PAYLOAD_LOG_CHARS] + "..."
        log.debug("%s %s %s", arrow, peer, shown)
