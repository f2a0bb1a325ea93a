"""Make hypercorn send a close frame when it fails a websocket, with wsproto's code (RFC 6455 §7.1.7).

    install()     # once, before hypercorn serves; idempotent

wsproto reports a frame it cannot accept (a text message that is not UTF-8, a reserved bit set, an unmasked
client frame, ...) as a ``CloseConnection`` event carrying the close code (1007 for bad UTF-8, RFC 6455
§7.4.1), while its own state stays OPEN. Hypercorn 0.18 (``WSStream._handle_events``) answers a close event
only in REMOTE_CLOSING, so for these it drops the TCP connection without a close frame: the peer sees 1006
and cannot tell what it did wrong. RFC 6455 §8.1 says to *fail the connection*, which means sending a close
frame with the code when possible, then closing (§7.1.7).

Hypercorn has no option or hook for this, so :func:`install` replaces that private method with a copy of
hypercorn 0.18.0's that also answers in the OPEN state. It patches only hypercorn versions it was checked
against (:data:`PATCHED_VERSIONS`); on any other it logs a warning and leaves hypercorn alone, and
``tests/test_twilio_hardening.py`` then fails, which is the cue to look again. The ASGI app still gets
``websocket.disconnect`` with code 1006 afterwards, as before.
"""

from __future__ import annotations

import importlib.metadata
import logging

from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import FrameTooLargeError, WSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

log = logging.getLogger(__name__)

PATCHED_VERSIONS = ("0.18.",)
"""Hypercorn versions (prefixes) whose ``WSStream._handle_events`` the copy below was made from."""
_MARK = "_dialtone_fails_with_close_frame"


async def _handle_events(self: WSStream) -> None:
    """hypercorn 0.18.0 ``WSStream._handle_events``; the one change is marked."""
    for event in self.connection.events():
        if isinstance(event, Message):
            try:
                self.buffer.extend(event)
            except FrameTooLargeError:
                await self._send_wsproto_event(CloseConnection(code=CloseReason.MESSAGE_TOO_BIG))
                break

            if event.message_finished:
                assert self.app_put is not None  # set before the handshake is accepted
                await self.app_put(self.buffer.to_message())
                self.buffer.clear()
        elif isinstance(event, Ping):
            await self._send_wsproto_event(event.response())
        elif isinstance(event, CloseConnection):
            # Changed: OPEN here means wsproto could not parse the peer's data (a close frame from the peer
            # moves it to REMOTE_CLOSING first); send the close frame with its code before closing.
            if self.connection.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.OPEN):
                if self.connection.state is ConnectionState.OPEN:
                    log.warning("websocket failed with close code %d: %s", event.code, event.reason)
                await self._send_wsproto_event(event.response())
            await self.send(StreamClosed(stream_id=self.stream_id))


setattr(_handle_events, _MARK, True)


def install() -> bool:
    """Patch hypercorn's ``WSStream`` (for HTTP/1.1, 2 and 3 alike). True if it is patched afterwards."""
    if getattr(WSStream._handle_events, _MARK, False):
        return True
    version = importlib.metadata.version("hypercorn")
    if not version.startswith(PATCHED_VERSIONS):
        log.warning(
            "hypercorn %s is not one wsfix was checked against; a websocket it fails closes without a "
            "close frame",
            version,
        )
        return False
    setattr(WSStream, "_handle_events", _handle_events)  # noqa: B010 (mypy forbids assigning a method)
    return True
