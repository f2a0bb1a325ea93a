"""How fast a call gets its model back, and what a rollover costs in caller audio.

    .venv/bin/python -m bench.reconnect [--drops 20] [--seed 1]     # ~1 minute

(A call recovers from at most 20 losses: ``ReconnectPolicy.max_per_call``.)

1. Repeated drops: one call through the real server (hypercorn, 127.0.0.1) and the Realtime simulator,
   the caller talking turn after turn, while the model socket in use is dropped every 1-2 s of wall time
   (alternately a close 1011 and a TCP reset, at whatever point of the conversation that falls). For
   each drop the service's summary line gives the time from the loss to the new session's
   ``session.updated`` (``reconnect_ms``); the simulator gives the time to the new socket's accept.
2. Rollovers: one call whose sessions last 8 s (the service rolls over 5 s before), several rollovers
   in all; the caller's audio appended to all the sessions is compared with what the caller sent:
   lost or duplicated bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import random
import statistics
from typing import Any

from service.sim.caller import place_call
from service.sim.realtime_server import RealtimeSimulator, SimConnection
from service.sim.script import AfterAgentSilent, HangUp, Say, Step, load_clip
from service.sim.stack import API_KEY, LocalStack

BRIDGE_LOGGER = "service.runtime.bridge"


class Summaries(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        summary = getattr(record, "summary", None)
        if isinstance(summary, dict):
            self.lines.append(summary)


def conversation(turns: int) -> list[Step]:
    clips = [load_clip("caller_question"), load_clip("caller_followup")]
    steps: list[Step] = [Say(clips[n % 2], AfterAgentSilent(300, timeout_ms=4000)) for n in range(turns)]
    return [*steps, HangUp(AfterAgentSilent(300, timeout_ms=4000))]


def appended(conn: SimConnection) -> int:
    return sum(
        len(base64.b64decode(e["audio"]))
        for e in conn.client_events
        if e["type"] == "input_audio_buffer.append"
    )


async def repeated_drops(drops: int, rng: random.Random, catcher: Summaries) -> dict[str, Any]:
    sim = RealtimeSimulator(api_key=API_KEY)
    accept_ms: list[float] = []
    async with LocalStack(sim=sim) as stack:
        kwargs = stack.call_kwargs(to="+15551230009", speed=2.0, script=conversation(4 * drops))
        call = asyncio.create_task(place_call(stack.http_base, **kwargs))
        await sim.wait_for_connection(0)
        for n in range(drops):
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            if call.done():
                break
            live = [c for c in sim.connections if not c.closed.is_set()][-1]
            count = len(sim.connections)
            live.drop(abort=n % 2 == 1)
            dropped_at = live.closed_at
            new = await sim.wait_for_connection(count, timeout_s=15)
            if dropped_at is None:
                await live.closed.wait()
                dropped_at = live.closed_at
            accept_ms.append((new.accepted_at - (dropped_at or new.accepted_at)) * 1000)
        await call
        for conn in sim.connections:
            await asyncio.wait_for(conn.closed.wait(), 10)
        await asyncio.sleep(0.2)
    summary = catcher.lines[-1]
    return {"reconnect_ms": summary["reconnect_ms"], "accept_ms": accept_ms, "end": summary["end_reason"]}


async def rollovers(catcher: Summaries) -> dict[str, Any]:
    sim = RealtimeSimulator(api_key=API_KEY, session_limit_s=8.0)
    async with LocalStack(sim=sim, env={"ROLLOVER_MARGIN_S": "5"}) as stack:
        record = await place_call(
            stack.http_base, **stack.call_kwargs(to="+15551230009", speed=1.0, script=conversation(6))
        )
        for conn in sim.connections:
            await asyncio.wait_for(conn.closed.wait(), 10)
        await asyncio.sleep(0.2)
    sent = sum(len(chunk) for _, chunk in record.spoken) * 6  # 24 kHz PCM16 per 8 kHz mu-law byte
    got = sum(appended(c) for c in sim.connections)
    summary = catcher.lines[-1]
    limits = sum(1 for c in sim.connections if c.ended_by == "session_limit")
    return {"sessions": len(sim.connections), "rollovers": summary["rollovers"], "sent": sent, "got": got,
            "hit_limit": limits, "end": summary["end_reason"]}  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(drops: int, seed: int) -> None:
    catcher = Summaries()
    bridge = logging.getLogger(BRIDGE_LOGGER)
    bridge.addHandler(catcher)
    bridge.setLevel(logging.INFO)
    logging.getLogger("service").setLevel(logging.ERROR)
    result = await repeated_drops(drops, random.Random(seed), catcher)
    reconnect, accept = result["reconnect_ms"], result["accept_ms"]
    print(f"repeated drops: {len(reconnect)} reconnects in one call (ended: {result['end']})")
    print(f"  loss -> new session confirmed (session.updated): p50 {statistics.median(reconnect):.0f} ms,"
          f" p90 {pct(reconnect, 0.9):.0f} ms, max {max(reconnect):.0f} ms")  # fmt: skip
    print(f"  loss -> new socket accepted by the server:       p50 {statistics.median(accept):.1f} ms,"
          f" max {max(accept):.1f} ms")  # fmt: skip
    roll = await rollovers(catcher)
    print(f"rollovers: {roll['rollovers']} in one call over {roll['sessions']} sessions of 8 s"
          f" ({roll['hit_limit']} reached their limit; ended: {roll['end']})")  # fmt: skip
    print(f"  caller audio sent {roll['sent']} B (as 24 kHz PCM16), appended to the sessions {roll['got']} B:"
          f" {max(0, roll['sent'] - roll['got'])} B lost, {max(0, roll['got'] - roll['sent'])} B duplicated")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--drops", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.drops, args.seed))
