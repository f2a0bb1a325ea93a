"""The call's model sockets ("links") and the schedule of the session's rollover. Pure.

A call has one *live* link (the session that hears the caller) and, while a rollover is being
prepared, a *spare*: a new socket, opened and configured before the live session's time limit, that
the call switches to at a quiet moment (make before break). Each link is numbered by the call, so
that what arrives from a replaced socket is recognised and ignored.

Times here are on the call's clock (``now``). The server's ``session.expires_at`` is epoch seconds;
it is mapped to the call's clock with the wall time the runtime reported when the socket opened.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from service.core.commands import OpenModel
from service.core.reconnect import ReconnectPolicy, Retry


class LinkState(StrEnum):
    OPENING = "opening"
    OPEN = "open"
    CONFIGURED = "configured"  # session.update sent
    READY = "ready"  # session.updated received, with the right audio formats


@dataclass(frozen=True, slots=True)
class RolloverPolicy:
    margin_s: float = 300.0
    """Replace the session this long before it expires, at the first quiet moment."""
    force_s: float = 15.0
    """If no quiet moment has come this long before expiry, switch anyway (capped at half the margin)."""
    retry_s: float = 1.0
    """After a spare socket failed, wait this long before opening another."""

    @property
    def force_lead_s(self) -> float:
        return min(self.force_s, self.margin_s / 2)


@dataclass(slots=True)
class Link:
    id: int
    model: str
    state: LinkState = LinkState.OPENING
    opened_at: float | None = None
    wall_offset_s: float = 0.0
    """``now - wall time`` at the opening: adds to an epoch time to put it on the call's clock."""
    expires_at: float | None = None
    """When the server will close this session (call clock), from ``session.created``."""

    @property
    def configured(self) -> bool:
        return self.state in (LinkState.CONFIGURED, LinkState.READY)

    def opened(self, now: float, wall_s: float) -> None:
        self.state = LinkState.OPEN
        self.opened_at = now
        self.wall_offset_s = now - wall_s

    def expires(self, expires_at_epoch_s: int | None) -> None:
        if expires_at_epoch_s is not None:
            self.expires_at = expires_at_epoch_s + self.wall_offset_s

    def rollover_at(self, policy: RolloverPolicy) -> float | None:
        return None if self.expires_at is None else self.expires_at - policy.margin_s

    def force_at(self, policy: RolloverPolicy) -> float | None:
        return None if self.expires_at is None else self.expires_at - policy.force_lead_s


class Sessions:
    """The call's model sockets: the live one, the spare of a rollover, and the retry in progress.

    Bookkeeping and schedules only; what a loss or a switch means for the call is decided by
    :class:`~service.core.call.Call`.
    """

    def __init__(
        self, model: str, reconnect: ReconnectPolicy, rollover: RolloverPolicy, rng: random.Random
    ) -> None:
        self.model = model
        self.reconnect = reconnect
        self.rollover = rollover
        self.live: Link | None = None
        self.spare: Link | None = None
        self.retry: Retry | None = None
        self._rng = rng
        self._count = 0
        self._spare_not_before = 0.0

    def _new(self) -> Link:
        self._count += 1
        return Link(self._count, self.model)

    def open_live(self, delay_s: float = 0.0) -> OpenModel:
        self.live = link = self._new()
        return OpenModel(link.id, link.model, delay_s)

    def open_spare(self) -> OpenModel:
        self.spare = link = self._new()
        return OpenModel(link.id, link.model)

    def which(self, link_id: int) -> Link | None:
        """The live link or the spare with this id; None for a socket already replaced."""
        for link in (self.live, self.spare):
            if link is not None and link.id == link_id:
                return link
        return None

    def promote_spare(self) -> Link | None:
        """The spare becomes the live link; returns the link it replaces."""
        old, self.live, self.spare = self.live, self.spare, None
        return old

    def spare_failed(self, now: float) -> None:
        self.spare = None
        self._spare_not_before = now + self.rollover.retry_s

    # --- loss and recovery ---------------------------------------------------------------------

    def lost(self, now: float, *, mid_call: bool) -> None:
        """The live link is gone: start a run of attempts (unless one is going on)."""
        if self.retry is None:
            self.retry = Retry(lost_at=now, mid_call=mid_call)

    def next_attempt(self, now: float) -> OpenModel | None:
        """The next attempt, or None: give up."""
        assert self.retry is not None
        delay = self.retry.next_delay(self.reconnect, self._rng, now)
        return None if delay is None else self.open_live(delay)

    def give_up_at(self) -> float | None:
        return None if self.retry is None else self.retry.lost_at + self.reconnect.give_up_s

    def recovered(self, now: float) -> int | None:
        """The live session is confirmed: the reconnect's duration in ms (None: there was none)."""
        retry, self.retry = self.retry, None
        if retry is None or not retry.mid_call:
            return None
        return round((now - retry.lost_at) * 1000)

    # --- rollover ------------------------------------------------------------------------------

    def rollover_deadline(self) -> float | None:
        """When to open a spare (no spare yet), or to force the switch (a ready spare)."""
        live, spare = self.live, self.spare
        if live is None:
            return None
        if spare is None:
            at = live.rollover_at(self.rollover)
            return None if at is None else max(at, self._spare_not_before)
        if spare.state is LinkState.READY:  # not ready yet: its session.updated will switch
            return live.force_at(self.rollover)
        return None

    def spare_due(self, now: float) -> bool:
        deadline = self.rollover_deadline()
        return self.spare is None and deadline is not None and now >= deadline

    def must_switch(self, now: float) -> bool:
        force_at = self.live.force_at(self.rollover) if self.live is not None else None
        return force_at is not None and now >= force_at
