"""What one server process does around its calls: admission, records, metrics, webhooks, the drain.

    ops = Operations(settings)             # in create_app (no thread, no socket yet)
    await ops.start()                      # in Service.start: the records store (its writer thread),
                                           # the event-loop lag watch
    await ops.admit(call_sid)              # the voice webhook: None, or why not (busy, draining...)
    ops.call_ended(call, end, wall)        # the bridge, as a call ends: O(1) work on the loop
    await ops.close()                      # in Service.stop, after the drain

A call whose agent has an ``analysis`` table is analysed after it ends (:mod:`service.runtime.analysis`,
an asyncio task: the call's end waits for nothing); its record is put in the store and its webhook sent
once the analysis is done or has failed (``analysis.error``), so both carry it and the cost includes
it. The drain waits for the analyses still running; ``close`` gives them what time is left, then
cancels them, and their records are kept all the same (``analysis.error``: the service shut down).

Shared with the other workers and instances through the database (:class:`~service.records.state.
SharedState`): single-use stream tokens, the call-control decisions (the ``<Connect action>`` request
may reach another worker than the call), the live-call counts behind ``MAX_CALLS``. Each has a local
copy that answers when the database does not (a warning says so): a database outage degrades to what
one process knows, it never refuses calls by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from service.config import Settings
from service.core.agent import AnalysisConfig
from service.core.analysis import AnalysisFailed, AnalysisResult
from service.core.call import Call
from service.core.commands import EndCall
from service.core.inputs import MachineDetected
from service.core.record import CallRecord
from service.records.errors import RecordsError, StateUnavailable
from service.records.shape import record_to_json
from service.records.store import RecordStore
from service.runtime.analysis import Analyst
from service.runtime.metrics import Metrics, watch_loop_lag
from service.runtime.webhooks import WebhookSender
from service.web.after_stream import DECISION_TTL_S, Decisions, decision_of
from service.web.capacity import Capacity
from service.web.security import SeenTokens

log = logging.getLogger(__name__)

RECORDS_BACKLOG = 1_000
"""Not ready while more call records than this wait for the database."""
DECISION_WAIT_S = 1.0
"""How long the action route waits for a decision another worker is still writing."""
AMD_PREFIX = "amd:"
AMD_POLL_S = 1.0
AMD_WATCH_S = 90.0
"""How long an outbound call looks for an answering-machine verdict that reached another worker or
instance (Twilio's detection ends within its 30 s timeout, plus the length of a machine's greeting)."""


class Operations:
    """One process's operations (see the module docstring)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self.bridges: set[Any] = set()
        """The live calls' bridges (the media endpoint adds and removes them)."""
        self.capacity = Capacity(settings.max_calls, settings.min_tokens_remaining)
        self.decisions = Decisions(clock)
        self.seen_tokens = SeenTokens()
        self.store: RecordStore | None = None
        self.webhooks: WebhookSender | None = None
        if settings.tools_signing_secret is not None:
            self.webhooks = WebhookSender(settings.tools_signing_secret)
        self.metrics = Metrics(lambda: len(self.bridges), self._records_queued)
        self._lag_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.analyst = Analyst(settings.openai_api_base_url, settings.openai_api_headers)
        self._analyses: set[asyncio.Task[None]] = set()
        self._watches: set[asyncio.Task[None]] = set()

    @property
    def analyses_pending(self) -> int:
        """Post-call analyses not finished yet (their records wait for them)."""
        return len(self._analyses)

    # --- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the records store (its migrations run in its thread) and watch the event loop."""
        try:
            self.store = RecordStore(
                self.settings.database_url, pricing=self.settings.pricing, live_calls=self.live_count
            )
        except RecordsError as exc:  # checked at start-up already; a store that cannot even begin
            log.error("call records disabled: %s", exc)
        self._lag_task = asyncio.get_running_loop().create_task(watch_loop_lag(self.metrics))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Deliver the webhooks and write the records still queued (what cannot be is logged whole)."""
        if self._lag_task is not None:
            self._lag_task.cancel()
        for watch in self._watches:
            watch.cancel()
        await self.settle_analyses(timeout_s)
        await self.analyst.close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.webhooks is not None:
            await self.webhooks.close(timeout_s)
        if self.store is not None:
            store, self.store = self.store, None
            not_kept = await asyncio.to_thread(store.close, timeout_s)
            if not_kept:
                log.error("%d call record(s) could not be written (logged above)", not_kept)

    async def settle_analyses(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the analyses running, then cancel the rest (their records are
        kept, with ``analysis.error``)."""
        if not self._analyses:
            return
        _done, pending = await asyncio.wait(set(self._analyses), timeout=timeout_s)
        if pending:
            log.warning("%d post-call analyses cut short: shutting down", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # --- admission --------------------------------------------------------------------------------

    def live_count(self) -> int:
        return self.capacity.count(len(self.bridges), self._clock())

    async def admit(self, call_sid: str) -> str | None:
        """Admit a call at its webhook (None) or say why not: ``draining``, ``rate_limited``, ``busy``."""
        capacity, now = self.capacity, self._clock()
        refusal = capacity.refusal(now)
        if refusal is not None:
            self.metrics.refused.labels(refusal).inc()
            return refusal
        admitted = capacity.has_room(len(self.bridges), now)
        if admitted and capacity.max_calls and self.store is not None:
            try:
                admitted = await asyncio.to_thread(
                    self.store.state.try_admit, capacity.max_calls, self.live_count()
                )
            except StateUnavailable as exc:
                log.warning("%s: counting this process's calls only", exc)
        if not admitted:
            self.metrics.refused.labels("busy").inc()
            return "busy"
        capacity.reserve(call_sid, self._clock())
        return None

    def ready(self) -> list[str]:
        """Why this process should not get new calls now (empty: ready)."""
        problems: list[str] = []
        refusal = self.capacity.refusal(self._clock())
        if refusal is not None:
            problems.append(refusal)
        elif not self.capacity.has_room(len(self.bridges), self._clock()):
            problems.append("busy")
        if self._records_queued() > RECORDS_BACKLOG:
            problems.append("call records backed up")
        return problems

    # --- stream tokens ------------------------------------------------------------------------------

    async def claim_token(self, call_sid: str, expiry_s: int, now_s: float) -> bool:
        """One stream per CallSid, across the workers (the database), else in this process."""
        if not self.seen_tokens.claim(call_sid, expiry_s, now_s):
            return False
        if self.store is None:
            return True
        try:
            return await asyncio.to_thread(self.store.state.claim_stream_token, call_sid, expiry_s, now_s)
        except StateUnavailable as exc:
            log.warning("%s: the token is checked in this process only", exc)
            return True

    # --- answering-machine verdicts ----------------------------------------------------------------

    def machine_verdict(self, call_sid: str, answered_by: str) -> bool:
        """Twilio's answering-machine verdict on an outbound call: handed to the call's bridge if it is
        live in this process (True); else kept as a decision, for the worker or instance the call is on
        (or for this one, if its stream has not started yet): its watch picks it up."""
        bridge = self._bridge_of(call_sid)
        if bridge is not None and bridge.call.agent is not None:  # its stream has started
            bridge.handle(MachineDetected(answered_by))
            return True
        self.put_decision(AMD_PREFIX + call_sid, {"answered_by": answered_by})
        return False

    def watch_machine_verdict(self, call_sid: str) -> None:
        """An outbound call's stream started here: look for its verdict in the decisions every
        ``AMD_POLL_S`` for ``AMD_WATCH_S``, until the call ends."""
        task = asyncio.get_running_loop().create_task(self._watch_machine_verdict(call_sid))
        self._watches.add(task)
        task.add_done_callback(self._watches.discard)

    async def _watch_machine_verdict(self, call_sid: str) -> None:
        deadline = self._clock() + AMD_WATCH_S
        while self._clock() < deadline:
            await asyncio.sleep(AMD_POLL_S)
            bridge = self._bridge_of(call_sid)
            if bridge is None:
                return  # the call is over
            if bridge.call.agent is None:
                continue  # its start is still being authorized
            found = await self.take_decision(AMD_PREFIX + call_sid, wait_s=0.0)
            if found is not None:
                answered_by = str(found.get("answered_by", "unknown"))
                log.info("answered by %s (the verdict reached another process)", answered_by)
                bridge.handle(MachineDetected(answered_by))
                return

    def _bridge_of(self, call_sid: str) -> Any:
        return next((b for b in self.bridges if b.call.call_sid == call_sid), None)

    # --- decisions ---------------------------------------------------------------------------------

    def put_decision(self, call_sid: str, decision: dict[str, Any]) -> None:
        self.decisions.put(call_sid, decision)
        if self.store is not None:
            self._in_background(self.store.state.put_decision, call_sid, decision, DECISION_TTL_S)

    async def take_decision(self, call_sid: str, wait_s: float = DECISION_WAIT_S) -> dict[str, Any] | None:
        """The call's decision: this process's, else the database's (waiting up to ``wait_s`` for a write
        that another worker has just begun)."""
        local = self.decisions.take(call_sid)
        store = self.store
        if store is None:
            return local
        if local is not None:
            self._in_background(store.state.take_decision, call_sid)
            return local
        deadline = self._clock() + wait_s
        while True:
            try:
                found = await asyncio.to_thread(store.state.take_decision, call_sid)
            except StateUnavailable as exc:
                log.warning("%s", exc)
                return None
            if found is not None or self._clock() >= deadline:
                return found
            await asyncio.sleep(0.05)

    # --- the end of a call ---------------------------------------------------------------------------

    def call_ended(
        self, call: Call, end: EndCall | None, token_genuine: bool, wall_now: float, now: float
    ) -> None:
        """Everything a call leaves: its decision (before Twilio asks), metrics, record, webhook.
        ``token_genuine``: its stream's token passed the signature check (it may be still unclaimed)."""
        agent_key = call.agent.key if call.agent is not None else call.start_params.get("agent")
        action = end.action if end is not None else None
        decision = decision_of(action, end, agent_key if token_genuine else None)
        if decision is not None and call.call_sid is not None:
            self.put_decision(call.call_sid, decision)
        record = call.record(now)
        agent = call.agent
        transcription = agent.transcription_model if agent is not None else None
        cost = self.settings.pricing.cost(record, transcription)
        self.metrics.call_ended(record, call.end_kind, cost)
        if agent is None:
            return  # never authorized: not a call of ours to record
        started = wall_now - (now - call.timeline.origin)
        url = agent.post_call_webhook or self.settings.post_call_webhook_url
        if agent.analysis is None:
            self._keep(record, started, wall_now, transcription, url, None)
        else:
            task = asyncio.get_running_loop().create_task(
                self._analyse_and_keep(record, agent.analysis, started, wall_now, transcription, url)
            )
            self._analyses.add(task)
            task.add_done_callback(self._analyses.discard)
        if self.store is not None and self.capacity.max_calls:
            self._in_background(self.store.state.heartbeat, self.live_count())

    async def _analyse_and_keep(
        self,
        record: CallRecord,
        config: AnalysisConfig,
        started: float,
        ended: float,
        transcription: str | None,
        url: str | None,
    ) -> None:
        try:
            result = await self.analyst.analyse(record, config)
        except asyncio.CancelledError:
            failed = AnalysisFailed(config.model, "not finished: the service shut down")
            self._keep(record, started, ended, transcription, url, failed)
            raise
        price = self.settings.pricing.analysis_cost(result)
        if price is not None and price.total is not None:
            self.metrics.cost.labels(record.agent or "", result.model).inc(price.total)
        self._keep(record, started, ended, transcription, url, result)

    def _keep(
        self,
        record: CallRecord,
        started: float,
        ended: float,
        transcription: str | None,
        url: str | None,
        analysis: AnalysisResult | None,
    ) -> None:
        """The record to the store and the webhook (both O(1): queued)."""
        if self.store is not None:
            self.store.put(record, started, ended, transcription_model=transcription, analysis=analysis)
        if url and self.webhooks is not None:
            pricing = self.settings.pricing
            doc = record_to_json(
                record,
                started,
                ended,
                cost=pricing.cost(record, transcription, analysis),
                transcription_model=transcription,
                analysis=analysis,
                analysis_price=pricing.analysis_cost(analysis),
            )
            self.webhooks.send(url, doc)

    # --- plumbing ------------------------------------------------------------------------------------

    def _records_queued(self) -> int:
        return self.store.stats().queued if self.store is not None else 0

    def _in_background(self, work: Callable[..., Any], *args: Any) -> None:
        """Database work off the loop, its failure logged (never raised into a call)."""

        async def run() -> None:
            try:
                await asyncio.to_thread(work, *args)
            except StateUnavailable as exc:
                log.warning("%s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
