"""The call's model sockets ("links") and the schedule of the session's rollover. Pure.

A call has one *live* link (the session that hears the caller) and, while a rollover is being
prepared, a *spare*: a new socket, opened and configured before the live session's time limit, that
the call switches to at a quiet moment (make before break). Each link is numbered by the call, so
that what arrives from a replaced socket is recognised and ignored.

Times here are on the call's clock (``now``). The server's ``session.expires_at`` is epoch seconds;
it is mapped to the call's clock with the wall time the runtime reported when the socket opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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
