"""A WebSocket over an asyncio transport, driven by the ``websockets`` library's Sans-I/O protocol.

Why not a framework's websocket: a call moves about 150 messages a second, and in a framework each one
crosses several queues, tasks and ASGI dicts before the call sees it. Here bytes from the transport go
straight through the protocol to a callback, and a message to send goes straight to the transport, in
the same turn of the event loop: no task, no queue, no await per message. (``websockets`` does the
protocol: framing, masking in C, control frames, the closing handshake, size limits.)

    ws = WebSocket(ServerProtocol(...) or ClientProtocol(...), transport, on_message, on_close)
    ws.receive(data)          # from Protocol.data_received; calls on_message(str | bytes) per message
    ws.send_text(text)
    ws.close(code, reason)    # closing handshake; the TCP connection is closed after it (or a timeout)
    ws.connection_lost()      # from Protocol.connection_lost; calls on_close(code, detail) once

A text message that is not UTF-8 fails the connection with 1007 (RFC 6455 §8.1); the Sans-I/O layer
leaves that check to its user. A peer that reads nothing while we write is cut off when the write
buffer passes :data:`MAX_WRITE_BUFFER` (a phone call never comes near it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import Event, Protocol, State

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0
"""How long the closing handshake may take before the TCP connection is closed anyway."""
MAX_WRITE_BUFFER = 8 * 1024 * 1024

OnMessage = Callable[[str | bytes], None]
OnClose = Callable[[int | None, str], None]
"""``(close code received, detail)``: code None when no close frame came (a reset, a failure)."""


class WebSocket:
    """One WebSocket connection: Sans-I/O protocol in the middle, transport below, callbacks above."""

    def __init__(
        self,
        protocol: Protocol,
        transport: asyncio.Transport,
        on_message: OnMessage,
        on_close: OnClose,
    ) -> None:
        self.protocol = protocol
        self._transport = transport
        self._on_message = on_message
        self._on_close = on_close
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._closed_reported = False
        self._close_timer: asyncio.TimerHandle | None = None

    @property
    def open(self) -> bool:
        return self.protocol.state is State.OPEN

    # --- receiving -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self.handle(self.protocol.events_received())

    def handle(self, events: list[Event]) -> None:
        """Act on events the protocol produced (frames; a handshake event is its owner's business)."""
        self.flush()
        for event in events:
            if isinstance(event, Frame):
                self._frame(event)
        if self.protocol.close_expected():
            self._close_later()

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragments = [bytes(frame.data)]
                self._fragment_text = opcode is Opcode.TEXT
                return
            self._deliver(frame.data, opcode is Opcode.TEXT)
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), []
                self._deliver(data, self._fragment_text)

    def _deliver(self, data: bytes | bytearray | memoryview, text: bool) -> None:
        if not text:
            self._on_message(bytes(data))
            return
        try:
            message = bytes(data).decode()
        except UnicodeDecodeError as exc:
            self.protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            log.warning("websocket failed: a text message is not UTF-8 (close 1007)")
            self.flush()
            self._close_later()
            return
        self._on_message(message)

    # --- sending ---------------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Send a text message (dropped once the connection is closing)."""
        if self.protocol.state is not State.OPEN:
            return
        self.protocol.send_text(text.encode())
        self.flush()

    def send_texts(self, texts: list[str]) -> None:
        """Send text messages, in order, in one write to the transport."""
        protocol = self.protocol
        if protocol.state is not State.OPEN:
            return
        for text in texts:
            protocol.send_text(text.encode())
        self.flush()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the TCP connection closes after it, or after a timeout."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self.flush()
        if self.protocol.state is not State.CLOSED:
            self._close_later()

    def abort(self) -> None:
        self._transport.abort()

    def flush(self) -> None:
        """Write what the protocol has to send."""
        transport = self._transport
        writes = self.protocol.data_to_send()
        if len(writes) == 1 and writes[0]:
            transport.write(writes[0])
        else:
            chunk: list[bytes] = []
            for data in writes:
                if data:
                    chunk.append(data)
                    continue
                if chunk:
                    transport.write(b"".join(chunk))
                    chunk = []
                transport.close()  # the protocol's end of stream: the TCP connection is to be closed
            if chunk:
                transport.write(b"".join(chunk))
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("websocket peer is not reading: connection aborted")
            transport.abort()

    def _close_later(self) -> None:
        if self._close_timer is None and not self._transport.is_closing():
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(CLOSE_TIMEOUT_S, self._transport.close)

    # --- end -------------------------------------------------------------------------------------

    def connection_lost(self) -> None:
        """The TCP connection is gone: report the close once."""
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.protocol.receive_eof()
        if self._closed_reported:
            return
        self._closed_reported = True
        received = self.protocol.close_rcvd
        if received is not None:
            self._on_close(received.code, f"code {received.code}")
        else:
            self._on_close(None, "no close frame")
