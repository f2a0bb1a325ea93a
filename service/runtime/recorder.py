"""Call recordings: every input of a call and every message it sent, one JSON line each, as it runs.

Opt-in with ``RECORD_CALLS_DIR``. It works on real calls, so a call against the real OpenAI can be
captured once and replayed forever (:mod:`service.replay`). Every line has ``t`` (ms since the call's
socket was accepted), ``peer`` (``twilio`` | ``realtime`` | ``service`` | ``timer``) and ``dir``:

- ``in`` / ``out``: a message received from / sent to that peer, verbatim in ``msg``;
- ``event``: any other input of the call (:mod:`service.core.inputs`): ``accepted``, ``closed``,
  ``open``, ``authorized`` (with the ``agent``), ``rejected``, ``timeout``.

Tool lines (``peer`` ``tool``) are the HTTP tool calls the call made (``out``: ``call_id``, ``tool``,
``arguments``) and their results (``in``: ``call_id``, ``output``, ``outcome``, ``duration_ms``).
Header values of tools and MCP servers (secrets) are never written: not in the agent, not in the
``session.update`` sent.

Model lines carry ``link``, the number of the model socket (a call may open several). The first line
is a header (``{"recording": 2, ...}``, with the call's policies in ``config``) and the last one the
call summary. :func:`read_input` turns a line back into the input it recorded; version 1 files (no
``link``, the agent on a line of its own, no ``accepted`` / ``authorized`` lines) are read too.
Recordings hold audio and transcripts: treat them as the caller's personal data.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
from pathlib import Path
from typing import IO, Any, assert_never

from service.core.agent import Agent, Keypad, McpServer, Tool, Transfer, TurnDetection
from service.core.call import CallConfig
from service.core.commands import CallTool
from service.core.inputs import (
    Input,
    MachineDetected,
    ModelClosed,
    ModelMessage,
    ModelOpened,
    Shutdown,
    StartAuthorized,
    StartRejected,
    StreamAccepted,
    TimerFired,
    ToolResult,
    TwilioClosed,
    TwilioMessage,
)
from service.core.links import RolloverPolicy
from service.core.reconnect import ReconnectPolicy
from service.runtime.routing import Outgoing
from service.wire import realtime, twilio

FORMAT_VERSION = 2
REDACTED = "[redacted]"
Line = dict[str, Any]


def input_line(event: Input) -> Line:
    """The recording line of an input (without ``t``)."""
    match event:
        case TwilioMessage(text=text):
            return {"peer": "twilio", "dir": "in", "msg": text}
        case ModelMessage(link=link, text=text):
            return {"peer": "realtime", "dir": "in", "msg": text, "link": link}
        case TimerFired():
            return {"peer": "timer", "dir": "event", "event": "timeout"}
        case StreamAccepted():
            return {"peer": "twilio", "dir": "event", "event": "accepted"}
        case TwilioClosed():
            return {"peer": "twilio", "dir": "event", "event": "closed"}
        case StartAuthorized(agent=agent):
            agent_fields = agent_to_dict(agent)
            return {"peer": "service", "dir": "event", "event": "authorized", "agent": agent_fields}
        case StartRejected(reason=reason):
            return {"peer": "service", "dir": "event", "event": "rejected", "detail": reason}
        case ModelOpened(link=link, wall_s=wall_s):
            return {"peer": "realtime", "dir": "event", "event": "open", "link": link, "wall": wall_s}
        case ModelClosed(link=link, code=code, detail=detail, http_status=status):
            line: Line = {"peer": "realtime", "dir": "event", "event": "closed", "link": link}
            line["detail"] = detail
            if code is not None:
                line["code"] = code
            if status is not None:
                line["status"] = status
            return line
        case Shutdown():
            return {"peer": "service", "dir": "event", "event": "shutdown"}
        case MachineDetected(answered_by=answered_by):
            return {"peer": "twilio", "dir": "event", "event": "answered_by", "detail": answered_by}
        case ToolResult(call_id=call_id, output=output, outcome=outcome, duration_ms=duration_ms):
            return {"peer": "tool", "dir": "in", "call_id": call_id, "output": output, "outcome": outcome,
                    "duration_ms": duration_ms}  # fmt: skip
        case _:
            assert_never(event)


def read_input(line: Line) -> Input | None:
    """The input a recording line holds, or None (a message we sent, or a line of another kind)."""
    peer, direction, kind = line.get("peer"), line.get("dir"), line.get("event")
    link = int(line.get("link", 1))
    match (peer, direction, kind):
        case ("twilio", "in", _):
            text = str(line["msg"])
            return TwilioMessage(twilio.parse(text), text)
        case ("realtime", "in", _):
            text = str(line["msg"])
            return ModelMessage(link, realtime.parse(text), text)
        case ("timer", "event", "timeout"):
            return TimerFired()
        case ("twilio", "event", "accepted"):
            return StreamAccepted()
        case ("twilio", "event", "closed"):
            return TwilioClosed()
        case ("service", "event", "authorized"):
            return StartAuthorized(agent_from_dict(line["agent"]))
        case ("service", "event", "shutdown"):
            return Shutdown()
        case ("twilio", "event", "answered_by"):
            return MachineDetected(str(line.get("detail", "")))
        case ("service", "event", "rejected"):
            return StartRejected(str(line.get("detail", "")))
        case ("realtime", "event", "open"):
            return ModelOpened(link, float(line.get("wall", 0.0)))
        case ("tool", "in", _):
            return ToolResult(
                str(line["call_id"]), str(line["output"]), str(line["outcome"]), int(line["duration_ms"])
            )
        case ("realtime", "event", "closed"):
            code, status = line.get("code"), line.get("status")
            return ModelClosed(
                link,
                int(code) if code is not None else None,
                str(line.get("detail", "")),
                int(status) if status is not None else None,
            )
        case _:
            return None


def config_from_dict(data: dict[str, Any]) -> CallConfig:
    """The call's policies as the header recorded them (defaults for what it does not say)."""
    fields = dict(data)
    fields["reconnect"] = ReconnectPolicy(**fields.get("reconnect", {}))
    fields["rollover"] = RolloverPolicy(**fields.get("rollover", {}))
    return CallConfig(**fields)


def agent_to_dict(agent: Agent) -> dict[str, Any]:
    """The agent as JSON values; header values (secrets) are not written, only their names."""
    data = dataclasses.asdict(agent)
    data["call_control"] = sorted(agent.call_control)
    for entry in (*data["tools"], *data["mcp"]):
        entry["headers"] = dict.fromkeys(entry["headers"], REDACTED)
    return data


def agent_from_dict(data: dict[str, Any]) -> Agent:
    fields = dict(data)
    fields["turn_detection"] = TurnDetection(**fields.get("turn_detection", {}))
    fields["tools"] = tuple(Tool(**tool) for tool in fields.get("tools", ()))
    fields["mcp"] = tuple(
        McpServer(**{**m, "allowed_tools": tuple(m["allowed_tools"]) if m.get("allowed_tools") else None})
        for m in fields.get("mcp", ())
    )
    fields["transfers"] = tuple(Transfer(**t) for t in fields.get("transfers", ()))
    fields["call_control"] = frozenset(fields.get("call_control", ()))
    fields["keypad"] = Keypad(**fields.get("keypad", {}))
    return Agent(**fields)


def _redact_mcp_headers(text: str) -> str:
    """A ``session.update`` without the values of its MCP servers' headers."""
    message = json.loads(text)
    for tool in message.get("session", {}).get("tools", ()):
        if tool.get("type") == "mcp" and "headers" in tool:
            tool["headers"] = dict.fromkeys(tool["headers"], REDACTED)
    return json.dumps(message, separators=(",", ":"))


class Recorder:
    """Writes one call's recording. Not thread-safe; one per call."""

    def __init__(self, path: Path, started_at: float, default_model: str, config: CallConfig) -> None:
        self.path = path
        self._t0 = started_at
        self._file: IO[str] | None = path.open("w", encoding="utf-8")
        self._line(
            {
                "recording": FORMAT_VERSION,
                "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "default_model": default_model,
                "config": dataclasses.asdict(config),
            }
        )

    @classmethod
    def in_directory(
        cls, directory: str | Path, started_at: float, default_model: str, config: CallConfig
    ) -> Recorder:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        return cls(folder / f"call-{stamp}-{secrets.token_hex(3)}.jsonl", started_at, default_model, config)

    def input(self, now: float, event: Input) -> None:
        self._line({"t": self._ms(now), **input_line(event)})

    def output(self, now: float, out: Outgoing) -> None:
        text = out.text
        if out.peer == "realtime" and '"mcp"' in text and "session.update" in text[:80]:
            text = _redact_mcp_headers(text)
        line: Line = {"t": self._ms(now), "peer": out.peer, "dir": "out", "msg": text}
        if out.peer == "realtime":
            line["link"] = out.link
        self._line(line)

    def tool_call(self, now: float, call: CallTool) -> None:
        self._line({"t": self._ms(now), "peer": "tool", "dir": "out", "call_id": call.call_id,
                    "tool": call.tool.name, "arguments": dict(call.arguments)})  # fmt: skip

    def close(self, summary: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._line({"summary": summary})
        self._file.close()
        self._file = None

    def _ms(self, now: float) -> float:
        return round((now - self._t0) * 1000, 3)

    def _line(self, obj: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
