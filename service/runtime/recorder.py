"""Call recordings: one JSON line per message on either socket, written as the call runs.

Opt-in with ``RECORD_CALLS_DIR``. It works on real calls, so a call against the real OpenAI can be
captured once and replayed forever (:mod:`service.replay`). Every line has ``t`` (ms since the call's
socket was accepted), ``peer`` (``twilio`` | ``realtime`` | ``timer``) and ``dir``:

- ``in`` / ``out``: a message received from / sent to that peer, verbatim in ``msg``;
- ``event``: a lifecycle fact the call logic saw (``open``, ``closed`` with ``detail``, ``timeout``).

The first line is a header (``{"recording": 1, ...}``), a line ``{"agent": {...}}`` records the agent the
call ran with (so a recording replays without the agents file), and the last line is the call summary.
Recordings hold audio and transcripts: treat them as the caller's personal data.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
from pathlib import Path
from typing import IO, Any

from service.agents import Agent

FORMAT_VERSION = 1


class Recorder:
    """Writes one call's recording. Not thread-safe; one per call."""

    def __init__(self, path: Path, started_at: float, default_model: str) -> None:
        self.path = path
        self._t0 = started_at
        self._file: IO[str] | None = path.open("w", encoding="utf-8")
        self._line(
            {
                "recording": FORMAT_VERSION,
                "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "default_model": default_model,
            }
        )

    @classmethod
    def in_directory(cls, directory: str | Path, started_at: float, default_model: str) -> Recorder:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        return cls(folder / f"call-{stamp}-{secrets.token_hex(3)}.jsonl", started_at, default_model)

    def write(self, now: float, peer: str, direction: str, msg: str | bytes, fields: dict[str, str]) -> None:
        line: dict[str, Any] = {"t": round((now - self._t0) * 1000, 3), "peer": peer, "dir": direction}
        if direction in ("in", "out"):
            line["msg"] = msg if isinstance(msg, str) else msg.decode("utf-8", "replace")
        line.update(fields)
        self._line(line)

    def agent(self, agent: Agent) -> None:
        self._line({"agent": dataclasses.asdict(agent)})

    def close(self, summary: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._line({"summary": summary})
        self._file.close()
        self._file = None

    def _line(self, obj: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
