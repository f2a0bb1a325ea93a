"""What the Quart routes share about Twilio: the signed form of a request Twilio made, and the
``<Connect action><Stream>`` TwiML that starts a call's media stream (inbound and outbound alike).

    form = await signed_form(settings, ACTION_PATH, "action request")   # or the 4xx Response to answer
    xml = stream_twiml(settings, [("agent", key), ("token", token), ...])
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from quart import Response, request
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse
from werkzeug.datastructures import MultiDict

from service.config import ACTION_PATH, MEDIA_PATH, Settings
from service.web.after_stream import APOLOGY
from service.web.security import SIGNATURE_HEADER, validate_twilio_signature

__all__ = ["signed_form", "stream_twiml"]

log = logging.getLogger(__name__)

_CALL_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")


async def signed_form(settings: Settings, path: str, what: str) -> MultiDict[str, str] | Response:
    """The form of the current request, which Twilio must have signed for ``path`` (with its query)
    and which must name a CallSid; else the 4xx to answer (403 forged or from another account, 400 no
    CallSid). ``what`` names the request in the warning."""
    form = await request.form
    url = settings.public_https_url(path)
    if request.query_string:
        url += "?" + request.query_string.decode("latin-1")
    signature = request.headers.get(SIGNATURE_HEADER)
    if not validate_twilio_signature(settings.twilio_auth_token, url, form, signature):
        log.warning("%s rejected: %s X-Twilio-Signature", what, "invalid" if signature else "missing")
        return Response("Forbidden\n", status=403, mimetype="text/plain")
    account_sid = form.get("AccountSid")
    if settings.twilio_account_sid and account_sid and account_sid != settings.twilio_account_sid:
        log.warning("%s rejected: AccountSid is not TWILIO_ACCOUNT_SID", what)
        return Response("Forbidden\n", status=403, mimetype="text/plain")
    if not _CALL_SID.fullmatch(form.get("CallSid", "")):
        log.warning("%s rejected: CallSid missing or invalid", what)
        return Response("Bad Request: CallSid is required\n", status=400, mimetype="text/plain")
    return form


def stream_twiml(settings: Settings, parameters: Iterable[tuple[str, str]]) -> str:
    """``<Connect action><Stream>`` with ``parameters``, then the apology and ``<Hangup/>``.

    When the stream ends Twilio asks ``action`` what to do (the agent's decision, or the apology); the
    verbs after ``</Connect>`` are the same apology for a Twilio that would not (they run only when
    there is no ``action``).
    """
    stream = Stream(url=settings.public_wss_url(MEDIA_PATH))
    for name, value in parameters:
        stream.parameter(name=name, value=value)
    connect = Connect(action=settings.public_https_url(ACTION_PATH), method="POST")
    connect.append(stream)
    response = VoiceResponse()
    response.append(connect)
    response.say(APOLOGY)
    response.hangup()
    return str(response)
