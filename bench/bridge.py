"""Per-call CPU and added latency of the whole call path, without sockets.

What one call costs the process, per 20 ms of conversation, for each direction, measured on the real
code path: JSON text in -> parse -> Call (transcoder included) -> serialize -> JSON text out. Socket and
asyncio overhead is measured separately by ``bench/sockets.py``.

    .venv/bin/python -m bench.bridge            # ~20 s

Figures printed:
- caller -> model: one Twilio ``media`` frame (160 B mu-law) to one ``input_audio_buffer.append``;
- model -> caller: 20 ms of model audio (as ``response.output_audio.delta`` of 100 ms, as the API sends
  them) to one Twilio ``media`` frame and its ``mark``; plus the mark echo;
- the implied number of concurrent calls one core could carry with both directions active;
- added latency: processing time per message (median, p99) plus the transcoder's group delay.
"""

from __future__ import annotations

import base64
import json
import statistics
import time

import numpy as np

from service.core.agent import Agent
from service.core.audio import Transcoder
from service.core.call import Call
from service.core.inputs import ModelMessage, ModelOpened, StartAuthorized, StreamAccepted, TwilioMessage
from service.runtime.routing import Outgoing, Router
from service.wire import realtime, twilio

SID = "MZ" + "0" * 32
FRAMES = 3000  # 60 s of caller audio
DELTA_MS = 100


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples), q))


def make_call() -> Call:
    agent = Agent(key="default", instructions="Be brief.")
    call = Call(transcoder=Transcoder(), default_model="gpt-realtime-2.1")
    call.handle(StreamAccepted(), 0.0)
    call.handle(ModelOpened(1, 0.0), 0.0)
    start = json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": SID,
            "start": {
                "streamSid": SID,
                "accountSid": "AC1",
                "callSid": "CA1",
                "tracks": ["inbound"],
                "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )
    call.handle(TwilioMessage(twilio.parse(start)), 0.0)
    call.handle(StartAuthorized(agent), 0.0)
    return call


def texts(router: Router, commands: list) -> list[str]:  # type: ignore[type-arg]
    return [out.text for out in map(router.route, commands) if isinstance(out, Outgoing)]


def speechlike(n: int, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    sig = sum(
        np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k for k, f in enumerate((180, 720, 1300, 2600), 1)
    )
    return (sig * 6000 * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype("<i2")


def bench_inbound(call: Call) -> list[float]:
    router = Router()
    mulaw = Transcoder().to_caller(speechlike(FRAMES * 480, 24_000, 1).tobytes())
    costs = []
    for i in range(FRAMES):
        payload = base64.b64encode(mulaw[i * 160 : (i + 1) * 160]).decode()
        text = (
            f'{{"event":"media","sequenceNumber":"{i + 2}","streamSid":"{SID}","media":{{"track":"inbound",'
            f'"chunk":"{i + 1}","timestamp":"{i * 20}","payload":"{payload}"}}}}'
        )
        t0 = time.perf_counter_ns()
        out = texts(router, call.handle(TwilioMessage(twilio.parse(text), text), i * 0.02))
        costs.append((time.perf_counter_ns() - t0) / 1000)
        assert len(out) == 1
    return costs


def floor_inbound() -> list[float]:
    """The unavoidable glue of one inbound frame: JSON + base64 in, base64 + JSON out."""
    payload = base64.b64encode(bytes(range(160))).decode()
    pcm = bytes(960)
    costs = []
    for i in range(FRAMES):
        text = (
            f'{{"event":"media","sequenceNumber":"{i + 2}","streamSid":"{SID}","media":{{"track":"inbound",'
            f'"chunk":"{i + 1}","timestamp":"{i * 20}","payload":"{payload}"}}}}'
        )
        t0 = time.perf_counter_ns()
        base64.b64decode(json.loads(text)["media"]["payload"])
        out = f'{{"type":"input_audio_buffer.append","audio":"{base64.b64encode(pcm).decode()}"}}'
        costs.append((time.perf_counter_ns() - t0) / 1000)
        assert out
    return costs


def floor_outbound() -> list[float]:
    """The unavoidable glue of one outbound frame: a fifth of a 100 ms delta's JSON + base64, one media
    message and one mark."""
    delta = json.dumps(
        {"type": "response.output_audio.delta", "delta": base64.b64encode(bytes(4800)).decode()}
    )
    frame = bytes(160)
    costs = []
    for _ in range(FRAMES // 5):
        t0 = time.perf_counter_ns()
        base64.b64decode(json.loads(delta)["delta"])
        for _ in range(5):
            audio = base64.b64encode(frame).decode()
            media = f'{{"event":"media","streamSid":"{SID}","media":{{"payload":"{audio}"}}}}'
            mark = json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": "item_1:20:g0:m1"}})
            assert media and mark
        costs.append((time.perf_counter_ns() - t0) / 1000 / 5)
    return costs


def bench_outbound(call: Call) -> tuple[list[float], list[float]]:
    pcm = speechlike(FRAMES * 480, 24_000, 2).tobytes()
    per_delta_frames = DELTA_MS // 20
    costs, echo_costs = [], []
    router = Router()
    call.handle(ModelMessage(1, realtime.ResponseCreated("resp_1")), 0.0)
    step = DELTA_MS * 48
    for k, i in enumerate(range(0, len(pcm), step)):
        text = json.dumps(
            {
                "type": "response.output_audio.delta",
                "event_id": f"e{k}",
                "response_id": "resp_1",
                "item_id": "item_1",
                "output_index": 0,
                "content_index": 0,
                "delta": base64.b64encode(pcm[i : i + step]).decode(),
            }
        )
        t0 = time.perf_counter_ns()
        out = texts(router, call.handle(ModelMessage(1, realtime.parse(text), text), k * 0.1))
        costs.append((time.perf_counter_ns() - t0) / 1000 / per_delta_frames)
        for msg in out:
            if '"mark"' in msg:
                name = json.loads(msg)["mark"]["name"]
                echo = json.dumps(
                    {"event": "mark", "sequenceNumber": "9", "streamSid": SID, "mark": {"name": name}}
                )
                t1 = time.perf_counter_ns()
                call.handle(TwilioMessage(twilio.parse(echo), echo), k * 0.1)
                echo_costs.append((time.perf_counter_ns() - t1) / 1000)
    return costs, echo_costs


def main() -> None:
    rounds = []
    for _ in range(3):
        call = make_call()
        inbound = bench_inbound(call)
        outbound, echoes = bench_outbound(call)
        rounds.append((inbound, outbound, echoes, floor_inbound(), floor_outbound()))
    inbound, outbound, echoes, floor_in, floor_out = ([x for r in rounds for x in r[k]] for k in range(5))
    med_in, med_out, med_echo, med_fin, med_fout = (
        statistics.median(v) for v in (inbound, outbound, echoes, floor_in, floor_out)
    )
    per_20ms = med_in + med_out + med_echo
    print("per 20 ms of call, real code path (parse -> Call + transcoder -> serialize), µs:")
    print(
        f"  caller -> model  median {med_in:6.1f}  p99 {_pct(inbound, 99):6.1f}   glue floor {med_fin:5.1f}"
    )
    print(
        f"  model -> caller  median {med_out:6.1f}  p99 {_pct(outbound, 99):6.1f}"
        f"   glue floor {med_fout:5.1f}"
    )
    print(f"  mark echo        median {med_echo:6.1f}  p99 {_pct(echoes, 99):6.1f}")
    print(
        f"  both directions  {per_20ms:6.1f} µs per 20 ms"
        f" = {per_20ms / 20_000 * 100:.2f} % of a core per call"
    )
    print(f"  ratio to the bare JSON + base64 glue (same run): {per_20ms / (med_fin + med_fout):.2f}x")
    print(f"  => about {int(20_000 / per_20ms)} concurrent calls per core, before sockets and asyncio")
    print("added latency per direction: the processing above (µs) + the transcoder's 1.67 ms group delay")


if __name__ == "__main__":
    main()
