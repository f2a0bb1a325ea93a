"""The records package's errors: one line each, never a URL's password nor a statement's parameters."""

from __future__ import annotations

__all__ = ["DatabaseUnavailable", "NotFound", "RecordsConfigError", "RecordsError", "StateUnavailable"]


class RecordsError(Exception):
    """Base of the errors below."""


class RecordsConfigError(RecordsError):
    """A DATABASE_URL that cannot be used: malformed, an unsupported backend, a missing driver or file."""


class DatabaseUnavailable(RecordsError):
    """The database did not answer (down, locked, unreachable) or has no Dialtone schema."""


class StateUnavailable(DatabaseUnavailable):
    """A shared-state operation could not reach the database; the caller decides (fail open or closed)."""


class NotFound(RecordsError):
    """No call with that CallSid (or record id)."""
