"""Replay a call recording through the call logic, in virtual time, and compare with the recording.

A recording (:mod:`service.runtime.recorder`) holds every message both peers sent, with its offset.
Replay feeds the inbound ones, and the lifecycle events, to a fresh :class:`~service.core.call.Call`
at their recorded offsets (``now`` is the recorded time: no clock, no sockets), serializes what the
call decides to send, and compares that with what the service sent when the call was recorded: the
recording is the golden.

HTTP tools are not run: the tool calls the call asks for are compared with the recorded ones (the
tool, its arguments and the model's ``call_id``, as ``("tool", text)`` in the outbound sequence, see
:func:`tool_text`), and the recorded results are inputs like any other.

Audio is compared with a tolerance of a few least-significant steps (numpy builds may round the last
bit differently); everything else must match exactly. Run it on files::

    python -m service.replay fixtures/calls/*.jsonl.gz
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.core.agent import Agent
from service.core.audio import AudioConverter, Transcoder
from service.core.call import Call, CallConfig
from service.core.commands import CallTool
from service.core.inputs import StartAuthorized, StartRejected, StreamAccepted
from service.runtime.recorder import Line, agent_from_dict, config_from_dict, input_line, read_input
from service.runtime.routing import Outgoing, Router
from service.wire import twilio

PCM_TOLERANCE = 2
MULAW_TOLERANCE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    """One recorded line: an input of the call, or a message it sent (``direction == "out"``)."""

    t_ms: float
    line: Line = field(repr=False)

    @property
    def peer(self) -> str:
        return str(self.line.get("peer", ""))

    @property
    def direction(self) -> str:
        return str(self.line.get("dir", ""))

    @property
    def msg(self) -> str:
        return str(self.line.get("msg", ""))

    @property
    def event(self) -> str:
        return str(self.line.get("event", ""))

    @property
    def link(self) -> int:
        return int(self.line.get("link", 1))


@dataclass(slots=True)
class Recording:
    path: Path
    default_model: str
    entries: list[Entry]
    summary: dict[str, Any]
    config: CallConfig = field(default_factory=CallConfig)

    def outbound(self) -> list[tuple[str, str]]:
        """What the call sent, in order: ``(peer, text)``; a tool call is ``("tool", tool_text(...))``."""
        return [
            ("tool", tool_text(e.line["call_id"], e.line["tool"], e.line["arguments"]))
            if e.peer == "tool"
            else (e.peer, e.msg)
            for e in self.entries
            if e.direction == "out"
        ]

    @property
    def agent(self) -> Agent | None:
        """The agent the recorded call ran with (None if its stream was rejected)."""
        for entry in self.entries:
            if entry.event == "authorized":
                return agent_from_dict(entry.line["agent"])
        return None


@dataclass(slots=True)
class ReplayResult:
    sent: list[tuple[str, str]]
    expected: list[tuple[str, str]]
    mismatches: list[str] = field(default_factory=list)
    call: Call | None = None

    @property
    def ok(self) -> bool:
        return not self.mismatches


def tool_text(call_id: str, tool: str, arguments: Mapping[str, Any]) -> str:
    """A tool call as compared by the replay: the model's call id, the tool's name, its arguments."""
    return json.dumps({"call_id": call_id, "tool": tool, "arguments": dict(arguments)}, sort_keys=True)


def _open(path: Path) -> Iterator[str]:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            yield from fh
    else:
        with path.open(encoding="utf-8") as fh:
            yield from fh


def load(path: str | Path) -> Recording:
    """Read a recording (``.jsonl`` or ``.jsonl.gz``), version 1 or 2.

    A version 1 file has no ``accepted`` line and keeps the agent on a line of its own: the inputs it
    implies (accepted at 0; the verdict right after ``start``) are put where the bridge now records them.
    """
    path = Path(path)
    default_model = ""
    version = 1
    config = CallConfig()
    v1_agent: Agent | None = None
    summary: dict[str, Any] = {}
    entries: list[Entry] = []
    for text in _open(path):
        if not text.strip():
            continue
        obj = json.loads(text)
        if "recording" in obj:
            default_model = str(obj.get("default_model", ""))
            version = int(obj["recording"])
            config = config_from_dict(obj.get("config", {}))
        elif "summary" in obj:
            summary = obj["summary"]
        elif "t" not in obj and "agent" in obj:
            v1_agent = agent_from_dict(obj["agent"])
        else:
            entries.append(Entry(float(obj["t"]), obj))
    if version == 1:
        entries = _upgrade_v1(entries, v1_agent)
    return Recording(path, default_model, entries, summary, config)


def _upgrade_v1(entries: list[Entry], agent: Agent | None) -> list[Entry]:
    upgraded = [Entry(0.0, input_line(StreamAccepted()))]
    verdict = StartAuthorized(agent) if agent is not None else StartRejected("the recorded call was rejected")
    started = False
    for entry in entries:
        upgraded.append(entry)
        is_start = entry.peer == "twilio" and entry.direction == "in" and '"start"' in entry.msg
        if is_start and not started and isinstance(twilio.parse(entry.msg), twilio.Start):
            started = True
            upgraded.append(Entry(entry.t_ms, input_line(verdict)))
    return upgraded


def replay(recording: Recording, transcoder: Callable[[], AudioConverter] = Transcoder) -> ReplayResult:
    """Feed the recording's inputs to a new Call; compare its outputs with the recorded ones."""
    call = Call(transcoder=transcoder(), default_model=recording.default_model, config=recording.config)
    router = Router()
    sent: list[tuple[str, str]] = []
    for entry in recording.entries:
        if call.ended:
            break
        event = read_input(entry.line)
        if event is None:
            continue
        for command in call.handle(event, entry.t_ms / 1000):
            out = router.route(command)
            if isinstance(out, Outgoing):
                sent.append((out.peer, out.text))
            elif isinstance(out, CallTool):
                sent.append(("tool", tool_text(out.call_id, out.tool.name, out.arguments)))
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
