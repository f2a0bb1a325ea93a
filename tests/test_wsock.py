"""The WebSocket layer of the lean path: messages both ways, fragments, bad UTF-8, the closing
handshake; and the model client's own text frames (a cheaper masking key) read back by a server."""

from __future__ import annotations

import asyncio

from websockets.protocol import Protocol, Side, State
from websockets.uri import parse_uri

from service.runtime.model import _ClientProtocol
from service.runtime.wsock import WebSocket


class Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def pair() -> tuple[WebSocket, Protocol, Transport, list[str | bytes], list[tuple[int | None, str]]]:
    messages: list[str | bytes] = []
    closes: list[tuple[int | None, str]] = []
    transport = Transport()
    protocol = Protocol(Side.SERVER, state=State.OPEN)
    server = WebSocket(protocol, transport, messages.append, lambda c, d: closes.append((c, d)))  # type: ignore[arg-type]
    return server, Protocol(Side.CLIENT, state=State.OPEN), transport, messages, closes


async def test_messages_fragments_and_one_write_for_many() -> None:
    server, client, transport, messages, _ = pair()
    client.send_text(b"hello")
    client.send_text(b"frag", fin=False)
    client.send_continuation(b"ment", fin=True)
    client.send_binary(b"\x00\x01")
    server.receive(b"".join(client.data_to_send()))
    assert messages == ["hello", "fragment", b"\x00\x01"]
    server.send_texts(["a", "b", "c"])
    client.receive_data(bytes(transport.written))
    assert [bytes(e.data) for e in client.events_received()] == [b"a", b"b", b"c"]


async def test_a_text_message_that_is_not_utf8_fails_the_connection_with_1007() -> None:
    server, client, transport, messages, closes = pair()
    client.send_text(b"\xff\xfe bad")
    server.receive(b"".join(client.data_to_send()))
    assert messages == []
    client.receive_data(bytes(transport.written))
    assert client.close_rcvd is not None and client.close_rcvd.code == 1007
    server.connection_lost()
    assert closes == [(None, "no close frame")]  # the peer never answered our close


async def test_the_closing_handshake_reports_the_peers_code_once() -> None:
    server, client, transport, _, closes = pair()
    client.send_close(1001, "going away")
    server.receive(b"".join(client.data_to_send()))
    assert transport.closed  # a server closes the TCP connection once the handshake is done
    server.connection_lost()
    server.connection_lost()
    assert closes == [(1001, "code 1001")]
    await asyncio.sleep(0)


def test_the_model_clients_text_frames_are_masked_frames_any_server_reads() -> None:
    client = _ClientProtocol(parse_uri("ws://127.0.0.1/v1/realtime"), state=State.OPEN)
    server = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
    keys = set()
    for size in (0, 5, 125, 126, 1280, 65535, 65536, 200_000):
        client.send_text(b"a" * size)
        wire = b"".join(client.data_to_send())
        header = 2 + (2 if 126 <= size < 65536 else 8 if size >= 65536 else 0)
        keys.add(wire[header : header + 4])
        assert wire[1] & 0x80  # masked, as a client must
        server.receive_data(wire)
        (frame,) = server.events_received()
        assert frame.data == b"a" * size
    assert len(keys) == 8  # a new key for every frame


async def test_frames_split_and_joined_across_reads_and_a_ping_then_the_librarys_path() -> None:
    server, client, transport, messages, closes = pair()
    for text in (b"one", b"two" * 100, b"three" * 20_000):  # 7, 16 and 64 bit lengths
        client.send_text(text)
    wire = b"".join(client.data_to_send())
    for i in range(0, len(wire), 7):  # seven bytes a read: every frame split, headers too
        server.receive(wire[i : i + 7])
    client.send_text(b"four")
    client.send_text(b"five")
    server.receive(b"".join(client.data_to_send()))  # two frames in one read
    assert messages == ["one", "two" * 100, "three" * 20_000, "four", "five"]
    client.send_ping(b"hi")
    client.send_text(b"six")
    server.receive(b"".join(client.data_to_send()))  # a control frame: the library takes over, for good
    client.receive_data(bytes(transport.written))
    assert [e.opcode.name for e in client.events_received()] == ["PONG"]
    assert messages[-1] == "six" and not server._fast
    client.send_close(1000, "")
    server.receive(b"".join(client.data_to_send()))
    server.connection_lost()
    assert closes == [(1000, "code 1000")]


async def test_an_unmasked_frame_from_a_client_is_a_protocol_error() -> None:
    server, _, transport, messages, _ = pair()
    server.receive(b"\x81\x03abc")  # a server must refuse unmasked client frames (RFC 6455 §5.1)
    assert messages == []
    assert transport.written.startswith(b"\x88")  # a close frame...
    assert int.from_bytes(transport.written[2:4], "big") == 1002  # ...with "protocol error"
