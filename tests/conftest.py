"""Shared fixtures: settings built from a test environment, and an agents file in a temporary directory."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.config import Settings

# Recognisable fake secrets: tests assert that none of them ever shows up in logs, errors or reprs.
TEST_OPENAI_KEY = "sk-test-openai-key-0123456789abcdef"
TEST_AUTH_TOKEN = "test-twilio-auth-token-0123456789"
TEST_PUBLIC_BASE_URL = "https://voice.example.test"

TEST_ENV: dict[str, str] = {
    "OPENAI_API_KEY": TEST_OPENAI_KEY,
    "TWILIO_AUTH_TOKEN": TEST_AUTH_TOKEN,
    "PUBLIC_BASE_URL": TEST_PUBLIC_BASE_URL,
}

TEST_AGENTS_TOML = """
[default]
instructions = "You are the receptionist of a test company."
voice = "marin"
greeting = "Hello from the default agent."

[default.turn_detection]
threshold = 0.5
prefix_padding_ms = 300
silence_duration_ms = 500

[numbers."+15551230001"]
instructions = "You take restaurant bookings."
voice = "cedar"

[numbers."+15551230002"]
instructions = "You are a support line."
greeting = ""

[numbers."+15551230002".turn_detection]
silence_duration_ms = 800
"""

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def agents_path(tmp_path: Path) -> Path:
    """``TEST_AGENTS_TOML`` written to ``tmp_path/agents.toml``."""
    path = tmp_path / "agents.toml"
    path.write_text(TEST_AGENTS_TOML, encoding="utf-8")
    return path


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """``make_settings(PORT="9000", ...)``: Settings from ``TEST_ENV`` plus overrides (env-var names).

    ``AGENTS_FILE`` defaults to ``tmp_path/agents.toml`` (the ``agents_path`` fixture writes it).
    """

    def factory(**env: str) -> Settings:
        return Settings.from_env({**TEST_ENV, "AGENTS_FILE": str(tmp_path / "agents.toml"), **env})

    return factory


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger's handlers and level back after a test that calls ``configure_logging``."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
