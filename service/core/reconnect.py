"""When to try the model socket again, and when to stop trying. Pure.

After an unexpected close the first attempt is immediate; then exponential backoff with jitter
(250, 500, 1000, 2000 ms... each scaled by a random factor in [1 - jitter, 1]), until
``give_up_s`` have passed since the socket was lost. Fatal failures (a refused key, no quota, an
unknown model: :func:`service.wire.realtime.close_is_fatal` and ``ErrorKind.FATAL``) are never retried.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    first_delay_s: float = 0.25
    """The delay before the second attempt (the first is immediate)."""
    max_delay_s: float = 2.0
    give_up_s: float = 10.0
    """Stop when the next attempt would start later than this after the loss."""
    jitter: float = 0.5
    """Each delay is scaled by a uniform random factor in ``[1 - jitter, 1]``."""
    max_per_call: int = 20
    """Losses one call may recover from (a model that keeps dropping is not a working model)."""

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """The delay before attempt ``attempt`` (1 = the first attempt after the loss)."""
        if attempt <= 1:
            return 0.0
        base = min(self.max_delay_s, self.first_delay_s * 2.0 ** (attempt - 2))
        return base * (1.0 - self.jitter * rng.random())

    def schedule_s(self, rng: random.Random) -> list[float]:
        """Every attempt's start, in seconds after the loss, while within ``give_up_s``."""
        starts: list[float] = []
        at, attempt = 0.0, 1
        while True:
            at += self.delay_s(attempt, rng)
            if at > self.give_up_s:
                return starts
            starts.append(at)
            attempt += 1


@dataclass(slots=True)
class Retry:
    """One run of attempts to get a model socket back, from the loss until success or giving up."""

    lost_at: float
    mid_call: bool = True
    """Lost while the call was talking to it (counted as a reconnect), not while it was first opening."""
    attempt: int = 0

    def next_delay(self, policy: ReconnectPolicy, rng: random.Random, now: float) -> float | None:
        """The delay before the next attempt, or None when it would start past ``give_up_s``."""
        self.attempt += 1
        delay = policy.delay_s(self.attempt, rng)
        if now + delay - self.lost_at > policy.give_up_s:
            return None
        return delay
