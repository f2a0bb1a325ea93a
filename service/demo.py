"""``make demo``: one whole phone call, locally, with no Twilio or OpenAI account.

Starts the Realtime simulator and the real Dialtone server (hypercorn, 127.0.0.1), then the Twilio
caller simulator places a call: the agent greets, the caller asks a question and hears the answer, asks
another, and interrupts the long answer. Prints the call's timeline and writes a stereo WAV (caller
left, agent right, as heard) to listen to::

    python -m service.demo [--speed 1.0] [--wav out/demo-call.wav] [--record out/calls]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from service.sim.caller import CallRecord, place_call
from service.sim.script import AfterAgentSilent, AfterAgentStarted, HangUp, Say, load_clip
from service.sim.stack import LocalStack

CALLED = "+15551230009"  # no entry of its own in fixtures/agents.toml: the default agent answers


class _SummaryCatcher(logging.Handler):
    """Keeps the service's per-call summary line (logged by the bridge) for the printout."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.summaries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        summary = getattr(record, "summary", None)
        if isinstance(summary, dict):
            self.summaries.append(summary)


def script() -> list[Say | HangUp]:
    return [
        Say(load_clip("caller_question"), AfterAgentSilent(600)),
        Say(load_clip("caller_followup"), AfterAgentSilent(600)),
        Say(load_clip("caller_interrupt"), AfterAgentStarted(2500)),
        HangUp(AfterAgentSilent(800)),
    ]


def timeline(record: CallRecord, truncations: list[Any]) -> list[tuple[float, str]]:
    """(stream ms, what happened), in order."""
    rows: list[tuple[float, str]] = []
    runs = record.heard_runs
    for start, name in record.says:
        clip = load_clip(name)
        end = start + clip.duration_ms
        rows.append((start, f"caller  says {clip.text!r} ({clip.duration_ms} ms)"))
        later = [r for r in runs if r[0] >= end]
        if later:
            rows.append(
                (
                    later[0][0],
                    f"agent   first audio heard {later[0][0] - end:.0f} ms after the caller stopped",
                )
            )
    for start, end in runs:
        rows.append((start, f"agent   audio plays for {end - start:.0f} ms"))
    for clear in record.clears:
        rows.append(
            (clear.stream_ms, f"twilio  clear (barge-in): {clear.played_ms:.0f} ms of that answer was heard")
        )
    for cut in truncations:
        rows.append(
            (
                record.clears[0].stream_ms if record.clears else 0.0,
                f"model   item truncated at {cut.audio_end_ms} ms of {cut.generated_ms} ms generated",
            )
        )
    rows.append((record.duration_ms, f"call    ended: {record.end_reason}"))
    return sorted(rows, key=lambda row: row[0])


async def run(speed: float, wav: Path, record_dir: Path | None) -> int:
    catcher = _SummaryCatcher()
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    bridge_log = logging.getLogger("service.runtime.bridge")
    bridge_log.setLevel(logging.INFO)
    bridge_log.addHandler(catcher)
    bridge_log.propagate = False
    env = {"RECORD_CALLS_DIR": str(record_dir)} if record_dir else {}
    async with LocalStack(env=env) as stack:
        out = sys.stdout
        out.write(f"Dialtone demo: server on {stack.http_base}, Realtime simulator on {stack.sim.url}\n")
        out.write(f"Placing a call to {CALLED} (stream time runs {speed:g}x real time)...\n\n")
        record = await place_call(
            stack.http_base, **stack.call_kwargs(to=CALLED, speed=speed, script=script())
        )
        conn = stack.sim.connections[0]
        await asyncio.wait_for(conn.closed.wait(), 10)
        truncations = list(conn.truncations)
    for ms, what in timeline(record, truncations):
        out.write(f"  {ms / 1000:7.2f} s  {what}\n")
    if catcher.summaries:
        s = catcher.summaries[-1]
        out.write(
            "\nService summary: {duration_s} s, {frames_in} frames in, {frames_out} frames out, "
            "{barge_ins} barge-in(s), {truncations} truncation(s), first audio after turn end (played) "
            "{first_audio_ms} ms, tokens in/out {input_tokens}/{output_tokens}, ended: {end_reason}\n".format(
                **s
            )
        )
    wav.parent.mkdir(parents=True, exist_ok=True)
    record.write_stereo_wav(wav)
    out.write(f"\nWrote {wav} (left: caller, right: agent as heard).\n")
    problems = record.protocol_errors + conn.anomalies
    if problems:
        out.write("Protocol problems seen:\n" + "".join(f"  - {p}\n" for p in problems))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one simulated phone call through Dialtone.")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="stream time / wall time (default 1: real time)"
    )
    parser.add_argument("--wav", type=Path, default=Path("out/demo-call.wav"))
    parser.add_argument(
        "--record", type=Path, default=None, help="also record the call (JSONL) in this folder"
    )
    args = parser.parse_args(argv)
    return asyncio.run(run(args.speed, args.wav, args.record))


if __name__ == "__main__":
    raise SystemExit(main())
