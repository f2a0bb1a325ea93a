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
leaves that check to its user.

A fast path bends the obvious way here: while the connection is open, whole unfragmented data frames
(FIN set, no reserved bit, masked exactly when the peer is a client, under the size limit) are read
straight off the buffer, unmasked in C, and delivered, without the library's generator-based parser
(about a fifth of the cost of a message). The first frame that is anything else (a control frame, a
fragment, an oversized or malformed frame), and all the bytes after it, go to the library's protocol for
good: it alone handles pings, the closing handshake and protocol errors.

A peer that reads nothing while we write is cut off when the write buffer passes
:data:`MAX_WRITE_BUFFER` (a phone call never comes near it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import Event, Protocol, Side, State

try:
    from websockets.speedups import apply_mask  # C, as websockets itself uses when it is built
except ImportError:  # pragma: no cover - a build without the extension
    from websockets.utils import apply_mask

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
        self._fast = True  # until the first frame the fast path leaves to the protocol
        self._buffer = bytearray()
        self._masked = protocol.side is Side.SERVER  # frames from a client are masked
        limit = protocol.max_message_size
        self._fast_limit = limit if limit is not None else 1 << 62

    @property
    def open(self) -> bool:
        return self.protocol.state is State.OPEN

    # --- receiving -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        if self._fast and self.protocol.state is State.OPEN:
            if self.protocol.reader.buffer:  # the protocol holds part of a frame (read with the handshake)
                self._fast = False
            else:
                self._receive_fast(data)
                return
        self.protocol.receive_data(data)
        self.handle(self.protocol.events_received())

    def _receive_fast(self, data: bytes) -> None:
        """Deliver the whole simple data frames at the head of the stream (see the module docstring).

        The usual read is exactly one frame: it is parsed from ``data`` itself; only a partial frame
        is kept, in ``_buffer``, for the next read.
        """
        if self._buffer:
            self._buffer += data
            buf: bytes | bytearray = self._buffer
        else:
            buf = data
        size = len(buf)
        pos = 0
        masked = self._masked
        key_len = 4 if masked else 0
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            opcode = b0 & 0x0F
            if b0 & 0xF0 != 0x80 or opcode not in (1, 2) or bool(b1 & 0x80) is not masked:
                self._leave_fast(buf, pos)
                return
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[head] << 8) | buf[head + 1]
                head += 2
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[head : head + 8], "big")
                head += 8
            if length > self._fast_limit:
                self._leave_fast(buf, pos)
                return
            start = head + key_len
            end = start + length
            if end > size:
                break
            payload = apply_mask(buf[start:end], buf[head:start]) if masked else bytes(buf[start:end])
            pos = end
            self._deliver(payload, opcode == 1)
            if not self._fast or self.protocol.state is not State.OPEN:
                self._leave_fast(buf, pos)
                return
        if pos < size:
            self._buffer = bytearray(buf[pos:])
        elif self._buffer:
            self._buffer = bytearray()

    def _leave_fast(self, buf: bytes | bytearray, pos: int) -> None:
        """Hand the rest of the stream, from ``pos``, to the library's protocol, for good."""
        self._fast = False
        rest = bytes(buf[pos:])
        self._buffer = bytearray()
        if rest:
            self.protocol.receive_data(rest)
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
            self._fast = False
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
