from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from service.config import Settings
from service.web.security import (
    SeenTokens,
    TokenCheck,
    UpgradeCheck,
    check_stream_token,
    check_stream_upgrade,
    mint_stream_token,
    stream_upgrade_allowed,
    token_expiry_s,
    validate_twilio_signature,
)

TOKEN = "auth-token-for-signature-tests"
URL = "https://voice.example.test/twilio/voice"
SECRET = b"0123456789abcdef0123456789abcdef"
CALL = "CA" + "0" * 32
NOW = 1_800_000_000.25


# --- webhook signatures ---------------------------------------------------------------------------------


def test_valid_signature_over_url_and_params() -> None:
    params = {"CallSid": CALL, "To": "+15551230001", "From": "+15557654321"}
    signature = RequestValidator(TOKEN).compute_signature(URL, params)
    assert validate_twilio_signature(TOKEN, URL, params, signature)
    assert not validate_twilio_signature(TOKEN, URL, {**params, "To": "+15551230002"}, signature)
    assert not validate_twilio_signature(TOKEN, URL + "?x=1", params, signature)
    assert not validate_twilio_signature("another-token", URL, params, signature)
    assert not validate_twilio_signature(TOKEN, URL, params, None)
    assert not validate_twilio_signature(TOKEN, URL, params, "")


def test_signature_over_multidict_with_repeated_names() -> None:
    form = MultiDict([("CallSid", CALL), ("Tag", "b"), ("Tag", "a")])
    # twilio.md §4: URL, then each name + value sorted by name, a repeated name's values sorted too.
    signed = f"{URL}CallSid{CALL}TagaTagb".encode()
    signature = base64.b64encode(hmac.new(TOKEN.encode(), signed, hashlib.sha1).digest()).decode()
    assert validate_twilio_signature(TOKEN, URL, form, signature)
    only_one = MultiDict([("CallSid", CALL), ("Tag", "b")])
    assert not validate_twilio_signature(TOKEN, URL, only_one, signature)


# --- media-stream upgrade -------------------------------------------------------------------------------


def upgrade_signature(settings: Settings, url: str | None = None) -> str:
    signed_url = url or settings.public_wss_url("/twilio/media")
    return str(RequestValidator(settings.twilio_auth_token).compute_signature(signed_url, {}))


def test_upgrade_signed_over_the_public_wss_url(settings: Settings) -> None:
    headers = {"X-Twilio-Signature": upgrade_signature(settings)}
    assert check_stream_upgrade(settings, headers) is UpgradeCheck.OK
    assert stream_upgrade_allowed(settings, headers)


def test_upgrade_with_wrong_signature_is_rejected_in_both_modes(make_settings) -> None:  # type: ignore[no-untyped-def]
    for mode in ("require", "allow-missing"):
        settings = make_settings(STREAM_SIGNATURE=mode)
        for url in (
            "https://voice.example.test/twilio/media",  # https instead of wss
            "wss://voice.example.test/twilio/media/",  # trailing slash
            "wss://localhost:8080/twilio/media",  # the Host header's idea of the URL
        ):
            headers = {"X-Twilio-Signature": upgrade_signature(settings, url)}
            assert check_stream_upgrade(settings, headers) is UpgradeCheck.BAD
            assert not stream_upgrade_allowed(settings, headers)


def test_missing_upgrade_signature_follows_the_switch(make_settings) -> None:  # type: ignore[no-untyped-def]
    assert check_stream_upgrade(make_settings(), {}) is UpgradeCheck.MISSING
    assert not UpgradeCheck.MISSING.allowed
    lenient = make_settings(STREAM_SIGNATURE="allow-missing")
    assert check_stream_upgrade(lenient, {"X-Twilio-Signature": ""}) is UpgradeCheck.UNSIGNED
    assert stream_upgrade_allowed(lenient, {})


def test_upgrade_with_a_query_string_is_rejected(settings: Settings) -> None:
    headers = {"X-Twilio-Signature": upgrade_signature(settings)}
    assert check_stream_upgrade(settings, headers, b"token=x") is UpgradeCheck.BAD
    signed_with_query = {
        "X-Twilio-Signature": upgrade_signature(settings, settings.public_wss_url("/twilio/media?a=1"))
    }
    assert check_stream_upgrade(settings, signed_with_query, "a=1") is UpgradeCheck.BAD


# --- stream tokens --------------------------------------------------------------------------------------


def test_token_round_trip_and_shape() -> None:
    token = mint_stream_token(SECRET, CALL, "default", NOW, 300)
    expiry, _, mac = token.partition(".")
    assert expiry == str(int(NOW) + 300)
    assert len(token) < 100 and "=" not in mac
    assert len(base64.urlsafe_b64decode(mac + "=")) == 32
    assert token_expiry_s(token) == int(NOW) + 300
    assert check_stream_token(SECRET, token, CALL, "default", NOW) is TokenCheck.OK
    assert check_stream_token(SECRET, token, CALL, "default", NOW + 299) is TokenCheck.OK


def test_token_is_bound_to_call_agent_and_secret() -> None:
    token = mint_stream_token(SECRET, CALL, "+15551230001", NOW, 300)
    assert check_stream_token(SECRET, token, "CA" + "1" * 32, "+15551230001", NOW) is TokenCheck.BAD
    assert check_stream_token(SECRET, token, CALL, "default", NOW) is TokenCheck.BAD
    assert check_stream_token(b"x" * 32, token, CALL, "+15551230001", NOW) is TokenCheck.BAD


def test_token_expiry_is_signed_and_enforced() -> None:
    token = mint_stream_token(SECRET, CALL, "default", NOW, 300)
    expiry = int(NOW) + 300
    assert check_stream_token(SECRET, token, CALL, "default", expiry) is TokenCheck.EXPIRED
    assert check_stream_token(SECRET, token, CALL, "default", expiry + 3600) is TokenCheck.EXPIRED
    extended = f"{expiry + 3600}.{token.partition('.')[2]}"
    assert check_stream_token(SECRET, extended, CALL, "default", expiry) is TokenCheck.BAD


def test_fields_cannot_be_shifted_between_call_sid_and_agent_key() -> None:
    token = mint_stream_token(SECRET, "CA1|x", "default", NOW, 300)
    assert check_stream_token(SECRET, token, "CA1", "x|default", NOW) is TokenCheck.BAD


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "1800000300",
        "1800000300.",
        ".AAAA",
        "18000x0300.AAAA",
        "-1800000300.AAAA",
        "1234567890123.AAAA",
        "1800000300.not*base64",
        "1800000300." + "A" * 42,  # 31.5 bytes
        "1800000300." + "A" * 44,  # 33 bytes
        "١٨٠٠٠٠٠٣٠٠.AAAA",  # non-ASCII digits
    ],
)
def test_malformed_tokens(token: str) -> None:
    assert check_stream_token(SECRET, token, CALL, "default", NOW) is TokenCheck.MALFORMED
    assert token_expiry_s(token) is None


def test_padded_or_re_encoded_mac_is_malformed() -> None:
    token = mint_stream_token(SECRET, CALL, "default", NOW, 300)
    assert check_stream_token(SECRET, token + "=", CALL, "default", NOW) is TokenCheck.MALFORMED


@given(st.text(max_size=80))
def test_garbage_is_never_accepted(token: str) -> None:
    assert check_stream_token(SECRET, token, CALL, "default", NOW) is not TokenCheck.OK


# --- single use -----------------------------------------------------------------------------------------


def test_seen_tokens_admit_once_until_expiry() -> None:
    seen = SeenTokens()
    token = mint_stream_token(SECRET, CALL, "default", NOW, 300)
    assert seen.admit(SECRET, token, CALL, "default", NOW) is TokenCheck.OK
    assert seen.admit(SECRET, token, CALL, "default", NOW + 1) is TokenCheck.REUSED
    assert CALL in seen and len(seen) == 1
    # A bad token does not claim the CallSid.
    other = "CA" + "2" * 32
    assert seen.admit(SECRET, token, other, "default", NOW) is TokenCheck.BAD
    assert other not in seen
    # After expiry the token itself is refused, and the entry is pruned.
    assert seen.admit(SECRET, token, CALL, "default", NOW + 300) is TokenCheck.EXPIRED
    seen.prune(NOW + 300)
    assert len(seen) == 0


def test_seen_tokens_memory_is_bounded() -> None:
    seen = SeenTokens(max_entries=3)
    for i in range(3):
        assert seen.claim(f"CA{i}", 1000 + i, now_s=0)
    assert not seen.claim("CA1", 1001, now_s=10)
    assert seen.claim("CA9", 2000, now_s=10)  # full: forgets the entry closest to expiry (CA0)
    assert len(seen) == 3 and "CA0" not in seen and "CA9" in seen
    assert seen.claim("CA10", 3000, now_s=1500)  # CA1, CA2 expired and pruned
    assert len(seen) == 2
    for i in range(10_000):
        seen.claim(f"CAx{i}", 4000 + i, now_s=4000 + i)
    assert len(seen) <= 3


def test_seen_tokens_rejects_a_useless_size() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        SeenTokens(max_entries=0)
