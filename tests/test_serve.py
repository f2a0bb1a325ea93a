"""``python -m service.serve`` refuses to start on bad configuration, listing every problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_serve(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TWILIO_", "PUBLIC_", "AGENTS_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "service.serve"], env={**clean, **env, "PYTHONPATH": str(ROOT)},
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_missing_settings_are_all_listed(tmp_path: Path) -> None:
    result = run_serve({"PORT": "not-a-port"}, tmp_path)
    assert result.returncode == 2
    for name in ("OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL", "PORT"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_an_invalid_agents_file_stops_start_up_with_its_problems(tmp_path: Path) -> None:
    (tmp_path / "agents.toml").write_text(
        '[default]\nvoice = "nobody"\n[numbers."555"]\ninstructions = "x"\n'
    )
    env = {"OPENAI_API_KEY": "sk-test-0123456789", "TWILIO_AUTH_TOKEN": "token-0123456789",
           "PUBLIC_BASE_URL": "https://voice.example.com"}  # fmt: skip
    result = run_serve(env, tmp_path)
    assert result.returncode == 2
    assert "default.instructions" in result.stderr and "default.voice" in result.stderr
    assert 'numbers."555"' in result.stderr
    assert "sk-test-0123456789" not in result.stderr and "token-0123456789" not in result.stderr
