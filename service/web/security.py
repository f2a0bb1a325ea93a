"""Who may open a call: Twilio webhook signatures, the media-stream upgrade, and per-call stream tokens.

Three layers (twilio.md §4, "defence in depth"):

1. The voice webhook must carry a valid ``X-Twilio-Signature`` over the *configured* public URL.
2. The media-stream upgrade must carry one over the exact ``wss://`` URL with empty params
   (``check_stream_upgrade``; ``STREAM_SIGNATURE=allow-missing`` tolerates a missing header, not a wrong one).
3. The signed webhook mints a token bound to the CallSid and the agent key; the stream's ``start`` must
   present it for the same CallSid, unexpired, once (``check_stream_token`` and ``SeenTokens``).

Everything here is pure: the current time is passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol

from twilio.request_validator import RequestValidator

from service.config import MEDIA_PATH, Settings

__all__ = [
    "SIGNATURE_HEADER",
    "SeenTokens",
    "TokenCheck",
    "UpgradeCheck",
    "check_stream_token",
    "check_stream_upgrade",
    "mint_stream_token",
    "stream_upgrade_allowed",
    "token_expiry_s",
    "validate_twilio_signature",
]

SIGNATURE_HEADER = "X-Twilio-Signature"
_TOKEN_LABEL = "dialtone/stream-token/v1"
_MAC_BYTES = 32
_MAX_EXPIRY_DIGITS = 12


class HeaderLookup(Protocol):
    """What is needed of a request's headers (werkzeug ``Headers`` or a plain dict)."""

    def get(self, key: str, /) -> str | None: ...


def validate_twilio_signature(
    auth_token: str, url: str, params: Mapping[str, str] | None, signature: str | None
) -> bool:
    """True when ``signature`` is Twilio's HMAC-SHA1 of ``url`` plus the sorted form ``params``.

    ``url`` must be the public URL Twilio requested (configured base URL + path + raw query string),
    never one rebuilt from ``Host``. ``params`` may be a werkzeug ``MultiDict`` (multi-values are signed).
    """
    if not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, params or {}, signature))


class UpgradeCheck(StrEnum):
    """Verdict on a media-stream websocket upgrade."""

    OK = "ok"  # signed correctly
    UNSIGNED = "unsigned"  # no signature, tolerated by STREAM_SIGNATURE=allow-missing
    MISSING = "missing"  # no signature: reject
    BAD = "bad"  # wrong signature, or a query string Twilio would not have sent: reject

    @property
    def allowed(self) -> bool:
        return self in (UpgradeCheck.OK, UpgradeCheck.UNSIGNED)


def check_stream_upgrade(
    settings: Settings, headers: HeaderLookup, query_string: bytes | str = b"", *, path: str = MEDIA_PATH
) -> UpgradeCheck:
    """Check a media-stream upgrade against ``wss://<public host><path>`` with empty params.

    Our TwiML's stream URL has no query string, so an upgrade that carries one was not sent by Twilio
    for our TwiML: it is rejected as BAD whatever its signature.
    """
    if query_string:
        return UpgradeCheck.BAD
    signature = headers.get(SIGNATURE_HEADER)
    if not signature:
        return UpgradeCheck.UNSIGNED if settings.stream_signature == "allow-missing" else UpgradeCheck.MISSING
    ok = validate_twilio_signature(settings.twilio_auth_token, settings.public_wss_url(path), {}, signature)
    return UpgradeCheck.OK if ok else UpgradeCheck.BAD


def stream_upgrade_allowed(
    settings: Settings, headers: HeaderLookup, query_string: bytes | str = b""
) -> bool:
    """Shorthand for ``check_stream_upgrade(...).allowed``."""
    return check_stream_upgrade(settings, headers, query_string).allowed


class TokenCheck(StrEnum):
    """Verdict on a stream token presented in ``start.customParameters``."""

    OK = "ok"
    MALFORMED = "malformed"  # not "<expiry>.<base64url mac>"
    BAD = "bad"  # wrong MAC: another call, another agent, or another secret
    EXPIRED = "expired"
    REUSED = "reused"  # valid, but this CallSid already opened a stream (SeenTokens)


def mint_stream_token(secret: bytes, call_sid: str, agent_key: str, now_s: float, ttl_s: int) -> str:
    """``"<expiry>.<base64url(HMAC-SHA256(secret, [label, call_sid, expiry, agent_key]))>"``, ~54 chars."""
    expiry_s = int(now_s) + ttl_s
    return f"{expiry_s}.{_b64url(_mac(secret, call_sid, expiry_s, agent_key))}"


def token_expiry_s(token: str) -> int | None:
    """The expiry (epoch seconds) a well-formed token claims, unverified; None when malformed."""
    parsed = _parse(token)
    return None if parsed is None else parsed[0]


def check_stream_token(secret: bytes, token: str, call_sid: str, agent_key: str, now_s: float) -> TokenCheck:
    """Check a token against the CallSid and agent key of the stream's ``start``, in constant time."""
    return _check(secret, token, call_sid, agent_key, now_s)[0]


def _check(secret: bytes, token: str, call_sid: str, agent_key: str, now_s: float) -> tuple[TokenCheck, int]:
    parsed = _parse(token)
    if parsed is None:
        return TokenCheck.MALFORMED, 0
    expiry_s, mac = parsed
    if not hmac.compare_digest(mac, _mac(secret, call_sid, expiry_s, agent_key)):
        return TokenCheck.BAD, expiry_s
    if now_s >= expiry_s:
        return TokenCheck.EXPIRED, expiry_s
    return TokenCheck.OK, expiry_s


class SeenTokens:
    """CallSids whose stream token was accepted, remembered until the token expires: one stream per call.

    Pure (``now_s`` is passed in) and bounded: expired entries are pruned on every claim, and when
    ``max_entries`` unexpired entries are held the one closest to expiry is forgotten to make room.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._expiry_by_sid: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._expiry_by_sid)

    def __contains__(self, call_sid: object) -> bool:
        return call_sid in self._expiry_by_sid

    def claim(self, call_sid: str, expiry_s: int, now_s: float) -> bool:
        """Remember ``call_sid`` until ``expiry_s``; False if it was already claimed and has not expired."""
        self.prune(now_s)
        if call_sid in self._expiry_by_sid:
            return False
        while len(self._expiry_by_sid) >= self.max_entries:
            _, oldest = heapq.heappop(self._heap)
            self._expiry_by_sid.pop(oldest, None)
        self._expiry_by_sid[call_sid] = expiry_s
        heapq.heappush(self._heap, (expiry_s, call_sid))
        return True

    def prune(self, now_s: float) -> None:
        while self._heap and self._heap[0][0] <= now_s:
            expiry_s, sid = heapq.heappop(self._heap)
            if self._expiry_by_sid.get(sid) == expiry_s:
                del self._expiry_by_sid[sid]

    def admit(self, secret: bytes, token: str, call_sid: str, agent_key: str, now_s: float) -> TokenCheck:
        """``check_stream_token``, then claim the CallSid: OK at most once per call."""
        verdict, expiry_s = _check(secret, token, call_sid, agent_key, now_s)
        if verdict is not TokenCheck.OK:
            return verdict
        return TokenCheck.OK if self.claim(call_sid, expiry_s, now_s) else TokenCheck.REUSED


def _mac(secret: bytes, call_sid: str, expiry_s: int, agent_key: str) -> bytes:
    # A JSON array keeps the fields unambiguous whatever characters they contain.
    message = json.dumps([_TOKEN_LABEL, call_sid, expiry_s, agent_key], separators=(",", ":"))
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).digest()


def _parse(token: str) -> tuple[int, bytes] | None:
    expiry_text, dot, mac_text = token.partition(".")
    if (
        not dot
        or not 0 < len(expiry_text) <= _MAX_EXPIRY_DIGITS
        or not (expiry_text.isascii() and expiry_text.isdigit())
    ):
        return None
    try:
        mac = base64.urlsafe_b64decode(mac_text + "=" * (-len(mac_text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(mac) != _MAC_BYTES or _b64url(mac) != mac_text:
        return None
    return int(expiry_text), mac


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
