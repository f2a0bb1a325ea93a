"""The one exception tree of Dialtone.

    ServiceError
    ├── ConfigError      settings or agents file invalid; ``problems`` lists every one
    └── ProtocolError    a peer sent something we cannot use; ``peer`` and ``reason`` say what

Messages never carry payloads, audio, transcripts or secrets.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error Dialtone raises on purpose."""


class ConfigError(ServiceError):
    """Configuration is invalid. ``problems`` holds one line per problem found."""

    def __init__(self, problems: list[str], source: str = "configuration") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} is invalid ({len(self.problems)} problem(s)):\n{lines}")


class ProtocolError(ServiceError):
    """A peer's message could not be used."""

    def __init__(self, peer: str, reason: str) -> None:
        self.peer = peer
        self.reason = reason
        super().__init__(f"{peer}: {reason}")
