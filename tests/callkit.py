"""Driving the pure call core like a transcript: inputs in, commands out (shared by the core's tests)."""

from __future__ import annotations

import random
from typing import Any

from service.core.agent import Agent
from service.core.call import Call, CallConfig
from service.core.commands import Command, ToModel
from service.core.inputs import (
    ModelClosed,
    ModelMessage,
    ModelOpened,
    StartAuthorized,
    StreamAccepted,
    TimerFired,
    TwilioClosed,
    TwilioMessage,
)
from service.wire import realtime, twilio

SID = "MZ" + "0" * 32
CALL = "CA" + "1" * 32
WALL = 1_800_000_000.0  # the wall clock (epoch s) the runtime reports when a model socket opens

AGENT = Agent(key="default", instructions="Be brief.", voice="marin", greeting="Hello there.")


class ThreeX:
    """Test transcoder: mu-law byte b -> three PCM samples of value b; PCM back -> every third sample."""

    def __init__(self) -> None:
        self.resets = 0
        self._carry = b""

    def to_model(self, mulaw_8k: bytes) -> bytes:
        return b"".join(bytes([b, 0]) * 3 for b in mulaw_8k)

    def to_caller(self, pcm16_24k: bytes) -> bytes:
        data = self._carry + pcm16_24k
        whole = len(data) // 6 * 6
        self._carry = data[whole:]
        return bytes(data[i] for i in range(0, whole, 6))

    def reset_to_caller(self) -> None:
        self.resets += 1
        self._carry = b""

    def flush_to_caller(self) -> bytes:
        self._carry = b""
        return b""


def start(params: dict[str, str] | None = None) -> twilio.Start:
    return twilio.Start(
        stream_sid=SID,
        account_sid="AC" + "2" * 32,
        call_sid=CALL,
        tracks=("inbound",),
        custom_parameters=params or {"agent": "default", "token": "x"},
        media_format=twilio.MediaFormat("audio/x-mulaw", 8000, 1),
    )


def media(ts: int | None, payload: bytes = b"\x7f" * 160) -> twilio.Media:
    chunk = ts // 20 + 1 if ts is not None else None
    return twilio.Media(SID, "inbound", chunk, ts, payload)  # type: ignore[arg-type]


def updated(fmt: str = "audio/pcm") -> realtime.SessionUpdated:
    return realtime.SessionUpdated(fmt, "audio/pcm", 24000 if fmt == "audio/pcm" else None, 24000)


def delta(ms: int, item: str = "item_a", response: str = "resp_1") -> realtime.AudioDelta:
    return realtime.AudioDelta(response, item, b"\x01\x00" * 24 * ms)


def done(response: str = "resp_1", status: str = "completed") -> realtime.ResponseDone:
    return realtime.ResponseDone(response, status, None, realtime.Usage())


def error(code: str | None, message: str = "") -> realtime.Error:
    kind = realtime.classify_error(code, message)
    return realtime.Error("invalid_request_error", code, message, None, None, kind)


def sent(commands: list[Any], kind: type) -> list[Any]:
    """Commands of ``kind``, model commands unwrapped from their ToModel."""
    plain = [c.command if isinstance(c, ToModel) else c for c in commands]
    return [c for c in plain if isinstance(c, kind)]


def unwrap(commands: list[Command]) -> list[Any]:
    return [c.command if isinstance(c, ToModel) else c for c in commands]


def links(commands: list[Command]) -> set[int]:
    return {c.link for c in commands if isinstance(c, ToModel)}


class Driver:
    """A Call and the helpers to feed it, one input at a time."""

    def __init__(self, agent: Agent = AGENT, config: CallConfig | None = None) -> None:
        """``config`` defaults to every frame sent at once (no quiet batching): transcripts stay short."""
        self.agent = agent
        self.audio = ThreeX()
        config = config if config is not None else CallConfig(quiet_batch_ms=0)
        self.call = Call(
            transcoder=self.audio, default_model="gpt-realtime-2.1", config=config, rng=random.Random(7)
        )

    def begin(self, now: float = 0.0) -> list[Command]:
        return self.call.handle(StreamAccepted(), now)

    def twilio(self, event: twilio.Event, now: float) -> list[Command]:
        return self.call.handle(TwilioMessage(event), now)

    def model(self, event: realtime.Event, now: float, link: int | None = None) -> list[Command]:
        link = link if link is not None else self.call.live_link
        assert link is not None
        return self.call.handle(ModelMessage(link, event), now)

    def opened(self, link: int, now: float, wall: float = WALL) -> list[Command]:
        return self.call.handle(ModelOpened(link, wall + now), now)

    def closed(
        self, link: int, now: float, code: int | None = 1011, status: int | None = None
    ) -> list[Command]:
        return self.call.handle(ModelClosed(link, code, f"code {code}", status), now)

    def authorize(self, now: float, agent: Agent | None = None) -> list[Command]:
        return self.call.handle(StartAuthorized(agent or self.agent), now)

    def timer(self, now: float) -> list[Command]:
        return self.call.handle(TimerFired(), now)

    def hangup(self, now: float) -> list[Command]:
        return self.call.handle(TwilioClosed(), now)

    def live(self) -> Driver:
        """Accepted, model socket 1 open, started, authorized, session confirmed (greeting asked)."""
        self.begin(0.0)
        self.opened(1, 0.1)
        self.twilio(start(), 0.2)
        self.authorize(0.2)
        self.model(updated(), 0.3)
        return self
