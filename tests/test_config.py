from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from service.config import DEFAULT_REALTIME_MODEL, DEPRECATED_MODELS, Settings, load_settings
from service.errors import ConfigError

BASE = {
    "OPENAI_API_KEY": "sk-base-openai-key-987654321",
    "TWILIO_AUTH_TOKEN": "base-twilio-auth-token-123456",
    "PUBLIC_BASE_URL": "https://voice.example.test",
}


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    return info.value.problems


def test_defaults_from_minimal_environment() -> None:
    s = Settings.from_env(BASE)
    assert s.openai_realtime_url == "wss://api.openai.com/v1/realtime"
    assert s.openai_realtime_model == DEFAULT_REALTIME_MODEL == "gpt-realtime-2.1"
    assert s.openai_realtime_model not in DEPRECATED_MODELS
    assert s.twilio_account_sid is None
    assert s.agents_file == Path("agents.toml")
    assert s.port == 8080
    assert s.log_level == "INFO"
    assert s.stream_token_ttl_s == 300
    assert s.stream_signature == "require"
    assert s.record_calls_dir is None
    assert s.log_payloads is False


def test_every_problem_is_listed_at_once() -> None:
    env = {
        "OPENAI_REALTIME_URL": "https://api.openai.com/v1/realtime",
        "OPENAI_REALTIME_MODEL": "bad model name",
        "TWILIO_ACCOUNT_SID": "XY123",
        "PORT": "70000",
        "LOG_LEVEL": "LOUD",
        "STREAM_TOKEN_TTL_S": "soon",
        "STREAM_SIGNATURE": "never",
        "STREAM_TOKEN_SECRET": "short",
        "LOG_PAYLOADS": "maybe",
    }
    problems = problems_of(env)
    names = [p.split(":", 1)[0] for p in problems]
    assert names == [
        "OPENAI_API_KEY",
        "TWILIO_AUTH_TOKEN",
        "PUBLIC_BASE_URL",
        "OPENAI_REALTIME_URL",
        "OPENAI_REALTIME_MODEL",
        "TWILIO_ACCOUNT_SID",
        "PORT",
        "STREAM_TOKEN_TTL_S",
        "LOG_LEVEL",
        "STREAM_SIGNATURE",
        "STREAM_TOKEN_SECRET",
        "LOG_PAYLOADS",
    ]
    assert "OPENAI_API_KEY: required" in problems
    assert any(p.startswith("PORT: must be an integer from 1 to 65535") for p in problems)


def test_error_message_names_variables_but_never_secret_values() -> None:
    secret = "s3cret-but-too-short"[:10]
    env = {**BASE, "STREAM_TOKEN_SECRET": secret, "PORT": "0"}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert "STREAM_TOKEN_SECRET" in message and "PORT" in message
    for value in (secret, BASE["OPENAI_API_KEY"], BASE["TWILIO_AUTH_TOKEN"]):
        assert value not in message
    assert info.value.source == "settings"


def test_empty_values_count_as_unset() -> None:
    problems = problems_of({**BASE, "OPENAI_API_KEY": "  ", "PORT": ""})
    assert problems == ["OPENAI_API_KEY: required"]


def test_repr_hides_secrets() -> None:
    s = Settings.from_env({**BASE, "STREAM_TOKEN_SECRET": "a-long-enough-stream-secret"})
    text = repr(s)
    assert "voice.example.test" in text
    for value in (BASE["OPENAI_API_KEY"], BASE["TWILIO_AUTH_TOKEN"], "a-long-enough-stream-secret"):
        assert value not in text


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://voice.example.test", "https://"),
        ("voice.example.test", "https://"),
        ("https://", "host"),
        ("https://voice.example.test/?a=1", "query"),
        ("https://voice.example.test#x", "query"),
        ("https://user:pw@voice.example.test", "user info"),
        ("https://voice.example.test:99999", "port"),
    ],
)
def test_public_base_url_must_be_plain_https(url: str, fragment: str) -> None:
    problems = problems_of({**BASE, "PUBLIC_BASE_URL": url})
    assert len(problems) == 1 and problems[0].startswith("PUBLIC_BASE_URL:")
    assert fragment in problems[0]


def test_public_urls_are_built_from_the_configured_base() -> None:
    s = Settings.from_env({**BASE, "PUBLIC_BASE_URL": "https://Voice.Example.test:8443/dialtone/"})
    assert s.public_base_url == "https://Voice.Example.test:8443/dialtone"
    assert s.public_https_url("/twilio/voice") == "https://Voice.Example.test:8443/dialtone/twilio/voice"
    assert s.public_wss_url("/twilio/media") == "wss://Voice.Example.test:8443/dialtone/twilio/media"
    plain = Settings.from_env(BASE)
    assert plain.public_wss_url("twilio/media") == "wss://voice.example.test/twilio/media"
    assert plain.public_https_url("/twilio/voice") == "https://voice.example.test/twilio/voice"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://api.openai.com/v1/realtime", "ws://"),
        ("wss:///v1/realtime", "host"),
        ("wss://x.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=d", "retired"),
    ],
)
def test_realtime_url_problems(url: str, fragment: str) -> None:
    problems = problems_of({**BASE, "OPENAI_REALTIME_URL": url})
    assert len(problems) == 1 and problems[0].startswith("OPENAI_REALTIME_URL:")
    assert fragment in problems[0]


def test_openai_auth_uses_bearer() -> None:
    s = Settings.from_env(BASE)
    assert s.realtime_auth_headers == {"Authorization": f"Bearer {BASE['OPENAI_API_KEY']}"}
    assert not s.is_azure


def test_azure_auth_uses_api_key_header() -> None:
    s = Settings.from_env({**BASE, "OPENAI_REALTIME_URL": "wss://my-res.openai.azure.com/openai/v1/realtime"})
    assert s.realtime_auth_headers == {"api-key": BASE["OPENAI_API_KEY"]}


def test_lookalike_azure_host_still_uses_bearer() -> None:
    s = Settings.from_env({**BASE, "OPENAI_REALTIME_URL": "wss://x.openai.azure.com.evil.test/v1/realtime"})
    assert "Authorization" in s.realtime_auth_headers


def test_connect_url_sets_model_and_keeps_other_params() -> None:
    s = Settings.from_env(
        {**BASE, "OPENAI_REALTIME_URL": "ws://127.0.0.1:9000/v1/realtime?model=old&trace=1"}
    )
    default = urlsplit(s.realtime_connect_url())
    assert (default.scheme, default.netloc, default.path) == ("ws", "127.0.0.1:9000", "/v1/realtime")
    assert parse_qsl(default.query) == [("trace", "1"), ("model", "gpt-realtime-2.1")]
    other = urlsplit(s.realtime_connect_url("gpt-realtime-2.1-mini"))
    assert dict(parse_qsl(other.query)) == {"trace": "1", "model": "gpt-realtime-2.1-mini"}


def test_stream_token_secret_is_derived_from_the_auth_token_unless_given() -> None:
    derived = Settings.from_env(BASE).stream_token_secret
    expected = hmac.new(
        BASE["TWILIO_AUTH_TOKEN"].encode(), b"dialtone/stream-token/v1", hashlib.sha256
    ).digest()
    assert derived == expected
    assert BASE["TWILIO_AUTH_TOKEN"].encode() not in derived
    other = Settings.from_env({**BASE, "TWILIO_AUTH_TOKEN": "another-auth-token-000000"}).stream_token_secret
    assert other != derived
    given = Settings.from_env({**BASE, "STREAM_TOKEN_SECRET": "explicit-secret-of-32-characters"})
    assert given.stream_token_secret == b"explicit-secret-of-32-characters"


def test_parsed_values() -> None:
    s = Settings.from_env(
        {
            **BASE,
            "TWILIO_ACCOUNT_SID": "AC" + "0123456789abcdef" * 2,
            "AGENTS_FILE": "/etc/dialtone/agents.toml",
            "PORT": "9000",
            "LOG_LEVEL": "debug",
            "STREAM_TOKEN_TTL_S": "60",
            "STREAM_SIGNATURE": "allow-missing",
            "RECORD_CALLS_DIR": "recordings",
            "LOG_PAYLOADS": "yes",
            "OPENAI_REALTIME_MODEL": "my-azure-deployment",
        }
    )
    assert s.twilio_account_sid == "AC" + "0123456789abcdef" * 2
    assert s.agents_file == Path("/etc/dialtone/agents.toml")
    assert (s.port, s.log_level, s.stream_token_ttl_s) == (9000, "DEBUG", 60)
    assert s.stream_signature == "allow-missing"
    assert s.record_calls_dir == Path("recordings")
    assert s.log_payloads is True
    assert s.openai_realtime_model == "my-azure-deployment"


def test_load_settings_merges_dotenv_and_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "OPENAI_API_KEY=sk-from-dotenv-file-000000\n"
        "TWILIO_AUTH_TOKEN=token-from-dotenv-000000\n"
        "PUBLIC_BASE_URL=https://dotenv.example.test\n"
        "PORT=7000\n"
        "# a comment\n"
        "LOG_LEVEL\n",
        encoding="utf-8",
    )
    s = load_settings({"PORT": "7100", "PUBLIC_BASE_URL": "https://env.example.test"}, dotenv_path=dotenv)
    assert s.openai_api_key == "sk-from-dotenv-file-000000"
    assert s.public_base_url == "https://env.example.test"
    assert s.port == 7100
    assert s.log_level == "INFO"


def test_load_settings_without_dotenv_file(tmp_path: Path) -> None:
    s = load_settings(BASE, dotenv_path=tmp_path / "missing.env")
    assert s.public_base_url == "https://voice.example.test"
    with pytest.raises(ConfigError):
        load_settings({}, dotenv_path=None)
