"""Whether a new call may start: the call limit, the drain, OpenAI's token budget. Pure (``now`` passed in).

A call is admitted at its voice webhook, before its stream exists; from then until its stream starts
(or :data:`RESERVATION_S` passes) it holds a *reservation* in the process that admitted it, so that a
burst of webhooks cannot overshoot the limit. The count a process reports is its live calls plus its
reservations. (A stream that lands on another worker is counted twice for a few seconds: the limit errs
on the side of refusing.)

Refusals, in order: ``draining`` (SIGTERM: the service is stopping), ``rate_limited`` (the last
``rate_limits.updated`` left fewer tokens than ``min_tokens`` until its reset), ``busy`` (``max_calls``
reached; :class:`~service.web.operations.Operations` checks it across the host's workers).
"""

from __future__ import annotations

from dataclasses import dataclass

RESERVATION_S = 15.0
"""How long an admitted call may take to start its stream (Twilio opens it within a second or two)."""


@dataclass(frozen=True, slots=True)
class TokenBudget:
    remaining: int
    until: float
    """When the budget resets (monotonic seconds): the knowledge is stale after that."""


class Capacity:
    """Admission bookkeeping of one process (see the module docstring)."""

    def __init__(self, max_calls: int, min_tokens: int) -> None:
        self.max_calls = max_calls  # 0: no limit
        self.min_tokens = min_tokens  # 0: never refuse for the budget
        self.draining = False
        self._reserved: dict[str, float] = {}  # CallSid -> until
        self._budget: TokenBudget | None = None

    def count(self, live: int, now: float) -> int:
        """This process's calls: ``live`` ones plus unexpired reservations."""
        for sid in [sid for sid, until in self._reserved.items() if until <= now]:
            del self._reserved[sid]
        return live + len(self._reserved)

    def refusal(self, now: float) -> str | None:
        """Why no call may start now, before counting calls (None: counting decides)."""
        if self.draining:
            return "draining"
        budget = self._budget
        low = budget is not None and budget.remaining < self.min_tokens and now < budget.until
        if low and self.min_tokens:
            return "rate_limited"
        return None

    def has_room(self, live: int, now: float) -> bool:
        """Room for one more in this process alone."""
        return not self.max_calls or self.count(live, now) < self.max_calls

    def reserve(self, call_sid: str, now: float) -> None:
        self._reserved[call_sid] = now + RESERVATION_S

    def started(self, call_sid: str) -> None:
        """The stream of ``call_sid`` started here: its reservation becomes a live call."""
        self._reserved.pop(call_sid, None)

    def rate_limits(self, remaining: int | None, reset_s: float | None, now: float) -> None:
        """A ``rate_limits.updated``'s token budget (the latest one wins)."""
        if remaining is None:
            return
        self._budget = TokenBudget(remaining, now + (reset_s if reset_s is not None else 60.0))
