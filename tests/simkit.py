"""A raw client for the Realtime simulator, and the audio it is fed (shared by the simulator's tests)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
from openai_schema import check_server_event
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from service.sim.realtime_server import RealtimeSimulator

KEY = "sk-sim-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TRANSCRIPTION_DELTA = "conversation.item.input_audio_transcription.delta"


def upsample_8k_to_24k(pcm: bytes) -> bytes:
    """8 kHz PCM16 (a fixture clip) as the model's 24 kHz PCM16, by linear interpolation."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    t = np.arange(len(x) * 3) / 3
    return np.interp(t, np.arange(len(x)), x).round().astype("<i2").tobytes()


def silence_24k(ms: int) -> bytes:
    """``ms`` of digital silence as 24 kHz PCM16."""
    return b"\x00\x00" * 24 * ms


def check_server_events(sim: RealtimeSimulator) -> None:
    """Every event the simulator sent, on every connection, is a GA server event."""
    for conn in sim.connections:
        for event in conn.server_events:
            check_server_event(event)


class Client:
    """A raw client: sends dicts, keeps every event received."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def recv(self, timeout_s: float = 5.0) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))
        self.events.append(event)
        return event

    async def until(self, kind: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Events received up to and including the next one of type ``kind``."""
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout_s):
            while True:
                got.append(await self.recv(timeout_s))
                if got[-1]["type"] == kind:
                    return got

    async def until_closed(self, timeout_s: float = 10.0) -> ConnectionClosed:
        """Read until the socket is closed; the exception that said so."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    await self.recv(timeout_s)
                except ConnectionClosed as closed:
                    return closed

    async def append(self, pcm: bytes, frame_bytes: int = 960, pace_s: float = 0.0) -> None:
        """``input_audio_buffer.append`` events of ``frame_bytes`` (960: 20 ms at 24 kHz) each, with a
        ``pace_s`` pause after each one when it is not 0."""
        for i in range(0, len(pcm), frame_bytes):
            chunk = base64.b64encode(pcm[i : i + frame_bytes]).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": chunk})
            if pace_s:
                await asyncio.sleep(pace_s)
