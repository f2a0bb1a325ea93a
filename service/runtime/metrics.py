"""Prometheus metrics of one process, named ``dialtone_*``, served at ``/metrics``.

Everything about a call is counted once, when it ends (from its record): the call path never touches a
metric. The live-call gauge is read when scraped, and the event loop's lag is sampled by a small task
(:func:`watch_loop_lag`).

With several worker processes (``WORKERS=N``) the supervisor gives them a shared directory
(``PROMETHEUS_MULTIPROC_DIR``: prometheus_client's multiprocess mode, which keeps each process's values
in memory-mapped files there): whichever worker is scraped then answers for all of them, counters and
histograms summed, the live gauges summed over the workers alive (``livesum``, refreshed every 0.5 s).

    dialtone_active_calls                      gauge: calls live in this process
    dialtone_calls_total{end_reason}           the kind of end: caller_hangup, agent_hangup, transfer,
                                               model_failure... (a closed set; the full reason is in the
                                               record, it would make a label without bound)
    dialtone_calls_refused_total{reason}       busy, draining, rate_limited
    dialtone_first_audio_seconds               histogram: end of the caller's turn to the agent's first audio
    dialtone_barge_ins_total
    dialtone_truncate_errors_total
    dialtone_model_reconnects_total
    dialtone_rollovers_total
    dialtone_tool_seconds{tool,outcome}        histogram
    dialtone_event_loop_lag_seconds            histogram
    dialtone_cost_usd_total{agent,model}
    dialtone_records_queued                    gauge: call records waiting for the database
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.core.cost import Cost
from service.core.record import CallRecord
from service.core.summary import END_KINDS

__all__ = ["CONTENT_TYPE_LATEST", "MULTIPROC_ENV", "Metrics", "watch_loop_lag"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (by the supervisor of several workers) before prometheus_client is imported: multiprocess mode."""

LATENCY_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
TOOL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
LAG_SAMPLE_S = 0.5


class Metrics:
    """The metrics of one process, in their own registry (so that several apps in one process do not
    share them: the tests run several)."""

    def __init__(self, live_calls: Callable[[], int], records_queued: Callable[[], int]) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.shared_dir = os.environ.get(MULTIPROC_ENV) or None
        self._live_calls, self._records_queued = live_calls, records_queued
        self.active = Gauge(
            "dialtone_active_calls", "Live calls.", registry=registry, multiprocess_mode="livesum"
        )
        self.queued = Gauge(
            "dialtone_records_queued", "Call records waiting for the database.", registry=registry,
            multiprocess_mode="livesum",
        )  # fmt: skip
        if self.shared_dir is None:  # one process: read when scraped
            self.active.set_function(lambda: float(live_calls()))
            self.queued.set_function(lambda: float(records_queued()))
        self.calls = Counter(
            "dialtone_calls", "Calls ended, by kind of end.", ["end_reason"], registry=registry
        )
        for kind in sorted(END_KINDS):
            self.calls.labels(kind)
        self.refused = Counter(
            "dialtone_calls_refused", "Calls refused at the webhook.", ["reason"], registry=registry
        )
        for reason in ("busy", "draining", "rate_limited"):
            self.refused.labels(reason)
        self.first_audio = Histogram(
            "dialtone_first_audio_seconds",
            "End of the caller's turn (or the call's start) to the agent's first audio heard.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.barge_ins = Counter(
            "dialtone_barge_ins", "Barge-ins (the caller cut the agent off).", registry=registry
        )
        self.truncate_errors = Counter(
            "dialtone_truncate_errors", "Truncations the model refused.", registry=registry
        )
        self.reconnects = Counter(
            "dialtone_model_reconnects", "Model sockets lost mid-call and reopened.", registry=registry
        )
        self.rollovers = Counter(
            "dialtone_rollovers", "Model sessions replaced before their time limit.", registry=registry
        )
        self.tools = Histogram(
            "dialtone_tool_seconds", "HTTP tool calls, by tool and outcome.", ["tool", "outcome"],
            buckets=TOOL_BUCKETS, registry=registry,
        )  # fmt: skip
        self.loop_lag = Histogram(
            "dialtone_event_loop_lag_seconds", "How late the event loop ran a timer (sampled every 0.5 s).",
            buckets=LAG_BUCKETS, registry=registry,
        )  # fmt: skip
        self.cost = Counter(
            "dialtone_cost_usd", "Cost of the calls (USD), where the prices are known.", ["agent", "model"],
            registry=registry,
        )  # fmt: skip

    def call_ended(self, record: CallRecord, end_kind: str, cost: Cost | None) -> None:
        """Count a call that ended (the one place calls are counted)."""
        self.calls.labels(end_kind).inc()
        for ms in record.first_audio_ms:
            self.first_audio.observe(ms / 1000)
        self.barge_ins.inc(record.barge_ins)
        self.truncate_errors.inc(int(record.summary.get("truncate_errors", 0)))
        self.reconnects.inc(len(record.reconnect_ms))
        self.rollovers.inc(record.rollovers)
        for tool in record.tool_calls:
            if tool.duration_ms is not None:
                self.tools.labels(tool.name, tool.outcome).observe(tool.duration_ms / 1000)
        if cost is not None and cost.total is not None:
            self.cost.labels(record.agent or "", record.model).inc(cost.total)

    def sample(self) -> None:
        """Refresh the live gauges (several workers: their files are what a scrape reads)."""
        if self.shared_dir is not None:
            self.active.set(self._live_calls())
            self.queued.set(self._records_queued())

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's metrics, or every worker's (multiprocess mode)."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        everyone = CollectorRegistry()
        multiprocess.MultiProcessCollector(everyone, path=self.shared_dir)  # type: ignore[no-untyped-call]
        return generate_latest(everyone)


async def watch_loop_lag(metrics: Metrics, interval_s: float = LAG_SAMPLE_S) -> None:
    """Sample the event loop's lag (how late a sleep wakes up) until cancelled."""
    while True:
        start = time.monotonic()
        await asyncio.sleep(interval_s)
        metrics.loop_lag.observe(max(0.0, time.monotonic() - start - interval_s))
        metrics.sample()
