"""The thin asyncio layer that runs one call: move messages, hand them to :class:`~service.core.call.Call`,
execute the commands it returns, in order.

Everything that happens to a call goes through one queue and one consumer loop, so the call sees a
single ordered stream of inputs (which is also exactly what the recorder writes and replay feeds back):

    twilio reader ──┐
    model reader ───┼──> queue ──> loop: Call.receive_*(...) -> commands -> send / connect / end
    (deadlines) ────┘                     (timeouts come from Call.next_deadline())

Supervision: the readers and the model connector are tasks owned by :class:`Bridge`; whatever way the
call ends (a command, a closed socket, cancellation by Quart when Twilio disconnects), ``finally``
cancels them, closes both sockets and logs the one summary line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from service.core.call import Call, Command, ConnectRealtime, EndCall
from service.logs import call_id_var
from service.runtime.recorder import Recorder
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


@dataclass(frozen=True, slots=True)
class _Input:
    kind: str  # "twilio" | "twilio_closed" | "realtime" | "realtime_open" | "realtime_closed"
    data: str | bytes = ""
    generation: int = 0


class Bridge:
    """Runs one :class:`Call` between a Twilio socket and a model socket."""

    def __init__(
        self,
        call: Call,
        twilio_ws: TwilioSocket,
        open_realtime: OpenRealtime,
        *,
        recorder: Recorder | None = None,
        clock: Callable[[], float] = time.monotonic,
        log_payloads: bool = False,
    ) -> None:
        self.call = call
        self._twilio = twilio_ws
        self._open_realtime = open_realtime
        self._recorder = recorder
        self._clock = clock
        self._queue: asyncio.Queue[_Input] = asyncio.Queue()
        self._realtime: RealtimeSocket | None = None
        self._realtime_generation = 0
        self._realtime_task: asyncio.Task[None] | None = None
        self._event_ids = itertools.count(1)
        self._end: EndCall | None = None
        self._agent_recorded = False
        self._log_payloads = log_payloads and log.isEnabledFor(logging.DEBUG)

    async def run(self) -> None:
        """Run the call to its end. Never raises for a peer's misbehaviour; re-raises cancellation."""
        reader = asyncio.create_task(self._read_twilio(), name="twilio-reader")
        try:
            await self._execute(self.call.begin(self._clock()))
            while self._end is None:
                item = await self._next_input()
                now = self._clock()
                if item is None:
                    self._record("timer", "event", event="timeout")
                    await self._execute(self.call.receive_timeout(now))
                else:
                    await self._dispatch(item, now)
        finally:
            reader.cancel()
            await self._shutdown()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _next_input(self) -> _Input | None:
        deadline = self.call.next_deadline()
        if deadline is None:
            return await self._queue.get()
        timeout = max(0.0, deadline - self._clock())
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _dispatch(self, item: _Input, now: float) -> None:
        call = self.call
        match item.kind:
            case "twilio":
                self._record("twilio", "in", msg=item.data)
                commands = call.receive_twilio(twilio.parse(item.data), now)
                if call.agent is not None and not self._agent_recorded:
                    self._agent_recorded = True
                    call_id_var.set(call.call_sid)  # every later line of this call carries its CallSid
                    if self._recorder is not None:
                        self._recorder.agent(call.agent)
            case "twilio_closed":
                self._record("twilio", "event", event="closed")
                commands = call.twilio_closed(now)
            case _ if item.generation != self._realtime_generation:
                return  # from a model socket we already replaced
            case "realtime":
                self._record("realtime", "in", msg=item.data)
                commands = call.receive_realtime(realtime.parse(item.data), now)
            case "realtime_open":
                self._record("realtime", "event", event="open")
                commands = call.realtime_opened(now)
            case _:
                detail = str(item.data)
                self._record("realtime", "event", event="closed", detail=detail)
                self._realtime = None
                commands = call.realtime_closed(now, detail)
        await self._execute(commands)

    async def _execute(self, commands: list[Command]) -> None:
        for command in commands:
            match command:
                case twilio.SendMedia() | twilio.SendMark() | twilio.SendClear():
                    text = twilio.serialize(command)
                    self._record("twilio", "out", msg=text)
                    try:
                        await self._twilio.send(text)
                    except SocketClosed:
                        await self._queue.put(_Input("twilio_closed"))
                case ConnectRealtime(model=model):
                    self._connect_realtime(model)
                case EndCall():
                    self._end = command
                    return
                case _:
                    await self._send_realtime(command)

    async def _send_realtime(self, command: realtime.Command) -> None:
        text = realtime.serialize(command, f"evt_{next(self._event_ids)}")
        self._record("realtime", "out", msg=text)
        if self._realtime is None:
            log.warning("model socket not open: %s dropped", type(command).__name__)
            return
        try:
            await self._realtime.send(text)
        except ConnectionClosed as exc:
            await self._queue.put(_Input("realtime_closed", _close_detail(exc), self._realtime_generation))

    def _connect_realtime(self, model: str) -> None:
        if self._realtime_task is not None:
            self._realtime_task.cancel()
        self._realtime = None
        self._realtime_generation += 1
        self._realtime_task = asyncio.create_task(
            self._run_realtime(model, self._realtime_generation), name="realtime-reader"
        )

    async def _run_realtime(self, model: str, generation: int) -> None:
        try:
            async with asyncio.timeout(REALTIME_CONNECT_TIMEOUT_S):
                ws = await self._open_realtime(model)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            log.error("model socket could not be opened: %s", type(exc).__name__)
            await self._queue.put(
                _Input("realtime_closed", f"connect failed: {type(exc).__name__}", generation)
            )
            return
        try:
            self._realtime = ws
            await self._queue.put(_Input("realtime_open", "", generation))
            while True:
                await self._queue.put(_Input("realtime", await ws.recv(), generation))
        except ConnectionClosed as exc:
            await self._queue.put(_Input("realtime_closed", _close_detail(exc), generation))
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await ws.close()

    async def _read_twilio(self) -> None:
        try:
            while True:
                await self._queue.put(_Input("twilio", await self._twilio.receive()))
        except SocketClosed:
            pass
        await self._queue.put(_Input("twilio_closed"))

    async def _shutdown(self) -> None:
        now = self._clock()
        if not self.call.ended:
            self.call.twilio_closed(now)
        if self._realtime_task is not None:
            self._realtime_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._realtime_task
        code = self._end.twilio_close_code if self._end is not None else 1000
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._twilio.close(code, "call ended")
        summary = self.call.summary(now)
        log.info("call summary %s", summary, extra={"summary": summary})
        if self._recorder is not None:
            self._recorder.close(summary)

    def _record(self, peer: str, direction: str, *, msg: str | bytes = "", **fields: str) -> None:
        if self._log_payloads and direction in ("in", "out"):
            text = msg if isinstance(msg, str) else repr(msg)
            shown = text if len(text) <= PAYLOAD_LOG_CHARS else text[:PAYLOAD_LOG_CHARS] + "..."
            log.debug("%s %s %s", "<" if direction == "in" else ">", peer, shown)
        if self._recorder is not None:
            self._recorder.write(self._clock(), peer, direction, msg, fields)


def _close_detail(exc: ConnectionClosed) -> str:
    frame = exc.rcvd or exc.sent
    return f"code {frame.code}" if frame is not None else "no close frame"
