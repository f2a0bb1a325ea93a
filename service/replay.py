"""Replay a call recording through the call logic, in virtual time, and compare with the recording.

A recording (:mod:`service.runtime.recorder`) holds every message both peers sent, with its offset.
Replay feeds the inbound ones, and the lifecycle events, to a fresh :class:`~service.core.call.Call`
at their recorded offsets (``now`` is the recorded time: no clock, no sockets), serializes what the
call decides to send, and compares that with what the service sent when the call was recorded: the
recording is the golden.

Audio is compared with a tolerance of a few least-significant steps (numpy builds may round the last
bit differently); everything else must match exactly. Run it on files::

    python -m service.replay fixtures/calls/*.jsonl.gz
"""

from __future__ import annotations

import argparse
import base64
import gzip
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.agents import Agent, TurnDetection
from service.core.audio import AudioConverter, Transcoder
from service.core.call import Call, Command, ConnectRealtime, EndCall, Rejected
from service.wire import realtime, twilio

PCM_TOLERANCE = 2
MULAW_TOLERANCE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    t_ms: float
    peer: str
    direction: str
    msg: str = ""
    event: str = ""
    detail: str = ""


@dataclass(slots=True)
class Recording:
    path: Path
    default_model: str
    agent: Agent | None
    entries: list[Entry]
    summary: dict[str, Any]

    def outbound(self) -> list[tuple[str, str]]:
        return [(e.peer, e.msg) for e in self.entries if e.direction == "out"]


@dataclass(slots=True)
class ReplayResult:
    sent: list[tuple[str, str]]
    expected: list[tuple[str, str]]
    mismatches: list[str] = field(default_factory=list)
    call: Call | None = None

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _open(path: Path) -> Iterator[str]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            yield from fh
    else:
        with path.open(encoding="utf-8") as fh:
            yield from fh


def agent_from_dict(data: dict[str, Any]) -> Agent:
    fields = dict(data)
    fields["turn_detection"] = TurnDetection(**fields.get("turn_detection", {}))
    return Agent(**fields)


def load(path: str | Path) -> Recording:
    """Read a recording (``.jsonl`` or ``.jsonl.gz``)."""
    path = Path(path)
    default_model = ""
    agent: Agent | None = None
    summary: dict[str, Any] = {}
    entries: list[Entry] = []
    for line in _open(path):
        if not line.strip():
            continue
        obj = json.loads(line)
        if "recording" in obj:
            default_model = str(obj.get("default_model", ""))
        elif "agent" in obj:
            agent = agent_from_dict(obj["agent"])
        elif "summary" in obj:
            summary = obj["summary"]
        else:
            entries.append(
                Entry(
                    t_ms=float(obj["t"]),
                    peer=obj["peer"],
                    direction=obj["dir"],
                    msg=obj.get("msg", ""),
                    event=obj.get("event", ""),
                    detail=obj.get("detail", ""),
                )
            )
    return Recording(path, default_model, agent, entries, summary)


def replay(recording: Recording, transcoder: Callable[[], AudioConverter] = Transcoder) -> ReplayResult:
    """Feed the recording's inputs to a new Call; compare its outputs with the recorded ones."""
    agent = recording.agent

    def authorize(start: twilio.Start, now_s: float) -> Agent | Rejected:
        return agent if agent is not None else Rejected("the recorded call was rejected")

    call = Call(authorize=authorize, transcoder=transcoder(), default_model=recording.default_model)
    event_ids = itertools.count(1)
    sent: list[tuple[str, str]] = []

    def emit(commands: list[Command]) -> None:
        for command in commands:
            match command:
                case twilio.SendMedia() | twilio.SendMark() | twilio.SendClear():
                    sent.append(("twilio", twilio.serialize(command)))
                case ConnectRealtime() | EndCall():
                    pass
                case _:
                    sent.append(("realtime", realtime.serialize(command, f"evt_{next(event_ids)}")))

    emit(call.begin(0.0))
    for entry in recording.entries:
        now = entry.t_ms / 1000
        if call.ended:
            break
        match (entry.peer, entry.direction, entry.event):
            case ("twilio", "in", _):
                emit(call.receive_twilio(twilio.parse(entry.msg), now))
            case ("realtime", "in", _):
                emit(call.receive_realtime(realtime.parse(entry.msg), now))
            case ("realtime", "event", "open"):
                emit(call.realtime_opened(now))
            case ("realtime", "event", "closed"):
                emit(call.realtime_closed(now, entry.detail))
            case ("twilio", "event", "closed"):
                emit(call.twilio_closed(now))
            case ("timer", "event", "timeout"):
                emit(call.receive_timeout(now))
            case _:
                pass
    result = ReplayResult(sent, recording.outbound(), call=call)
    result.mismatches = compare(result.expected, result.sent)
    return result


def compare(
    expected: list[tuple[str, str]],
    got: list[tuple[str, str]],
    *,
    timing_tolerance_ms: int = 0,
    limit: int = 10,
) -> list[str]:
    """Differences between two outbound message sequences, as readable lines (at most ``limit``).

    ``timing_tolerance_ms``: how far a value derived from elapsed time (a truncation point) may differ;
    zero in virtual time, one frame when replaying over real sockets.
    """
    problems: list[str] = []
    if len(expected) != len(got):
        problems.append(f"{len(got)} messages sent, {len(expected)} recorded")
    for i, (want, have) in enumerate(zip(expected, got, strict=False)):
        if not same_message(want, have, timing_tolerance_ms):
            problems.append(f"message {i} to {want[0]}: expected {_brief(want[1])}, sent {_brief(have[1])}")
            if len(problems) >= limit:
                break
    return problems


def same_message(want: tuple[str, str], have: tuple[str, str], timing_tolerance_ms: int = 0) -> bool:
    """Equal, or the same message whose audio differs by at most a rounding step (and whose truncation
    point differs by at most ``timing_tolerance_ms``)."""
    if want == have:
        return True
    if want[0] != have[0]:
        return False
    a, b = json.loads(want[1]), json.loads(have[1])
    if want[0] == "twilio" and a.get("event") == "media" == b.get("event"):
        pa, pb = a.pop("media")["payload"], b.pop("media")["payload"]
        return a == b and _close(pa, pb, np.uint8, MULAW_TOLERANCE)
    if want[0] == "realtime" and a.get("type") == "input_audio_buffer.append" == b.get("type"):
        pa, pb = a.pop("audio"), b.pop("audio")
        return a == b and _close(pa, pb, np.dtype("<i2"), PCM_TOLERANCE)
    if want[0] == "realtime" and a.get("type") == "conversation.item.truncate" == b.get("type"):
        end_a, end_b = a.pop("audio_end_ms"), b.pop("audio_end_ms")
        return bool(a == b and abs(int(end_a) - int(end_b)) <= timing_tolerance_ms)
    return False


def _close(a: str, b: str, dtype: Any, tolerance: int) -> bool:
    x = np.frombuffer(base64.b64decode(a), dtype=dtype).astype(np.int32)
    y = np.frombuffer(base64.b64decode(b), dtype=dtype).astype(np.int32)
    return x.shape == y.shape and (x.size == 0 or int(np.max(np.abs(x - y))) <= tolerance)


def _brief(text: str) -> str:
    return text if len(text) <= 160 else text[:150] + "…"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("recordings", nargs="+", type=Path)
    args = parser.parse_args(argv)
    failed = 0
    for path in args.recordings:
        result = replay(load(path))
        status = "ok" if result.ok else "MISMATCH"
        sys.stdout.write(f"{status}  {path}  ({len(result.sent)} messages)\n")
        for line in result.mismatches:
            sys.stdout.write(f"    {line}\n")
        failed += not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
