"""What a call does once its media stream has ended: ``<Connect action>`` and the transfer's requests.

The bridge decides (the agent's ``end_call`` or ``transfer_call``; or a failure), stores the decision
for the CallSid (:func:`decision_of`) *before* it closes the stream, and Twilio then POSTs the
``<Connect action>`` URL (signed) and runs the TwiML we answer (:func:`action_twiml`)::

    decision                      TwiML answered to POST /twilio/action
    {"action": "hangup"}          <Hangup/>
    {"action": "apology"}         <Say>Sorry, the assistant is unavailable...</Say><Hangup/>
    {"action": "shutdown"}        <Say>Sorry, this line has to close now...</Say><Hangup/>
    {"action": "dial", ...}       <Dial action="/twilio/dial-done?..." timeout callerId?>
                                     <Number url="/twilio/whisper?...">+1...</Number> | <Sip>...</Sip>
                                  </Dial>
    none (unknown or expired)     <Hangup/>
    CallStatus=completed          <Response/>   (the caller hung up: nothing is left to run)

After a dial, Twilio POSTs ``/twilio/dial-done`` with ``DialCallStatus``: a dial that was answered has
ended the call (``<Hangup/>``); one that was not goes to the transfer's fallback: another agent (a new
``<Connect><Stream>`` with a fresh token) or a message and ``<Hangup/>``. Whoever answers a transfer
first hears the whisper (the configured sentence and the agent's summary) from ``/twilio/whisper``.

Decisions live in a :class:`Decisions` store (in memory, per process, with a time to live); every
answer is TwiML built with the twilio library. Pure but for the store's clock, passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from twilio.twiml.voice_response import Dial, VoiceResponse

from service.core.agent import Agent, Transfer
from service.core.commands import Action, EndCall, Hangup
from service.core.commands import Dial as DialAction
from service.core.summary import SHUTDOWN_REASON

APOLOGY = "Sorry, the assistant is unavailable right now. Goodbye."
NOBODY_ANSWERED = "Sorry, nobody could take your call right now. Goodbye."
SHUTTING_DOWN = "Sorry, this line has to close now. Please call again in a moment. Goodbye."
DECISION_TTL_S = 600.0
"""How long a decision waits for Twilio's action request (it comes within a second of the stream's end)."""
WHISPER_TTL_S = 600.0
ANSWERED_DIAL = frozenset({"completed", "answered"})
MAX_SUMMARY_CHARS = 400
"""The whisper is said to a person about to take the call: a few sentences at most."""


def decision_of(
    action: Action | None, end: EndCall | None, agent_key: str | None
) -> dict[str, Any] | None:
    """The decision to store for a call that ended (None: nothing to store). ``agent_key`` is None when
    the stream's token was not genuine: a CallSid we cannot vouch for."""
    if agent_key is None:
        return None
    match action:
        case Hangup():
            return {"action": "hangup", "agent": agent_key}
        case DialAction(transfer=transfer, summary=summary):
            return {"action": "dial", "agent": agent_key, "transfer": transfer.name,
                    "summary": summary[:MAX_SUMMARY_CHARS]}  # fmt: skip
        case None:
            reason = end.reason if end is not None else None
            if reason in ("caller hung up", "twilio socket closed"):
                return None  # nobody is left to tell anything
            kind = "shutdown" if reason == SHUTDOWN_REASON else "apology"
            return {"action": kind, "agent": agent_key}


class Decisions:
    """Decisions by CallSid, each read at most once, forgotten after ``ttl_s``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}

    def put(self, call_sid: str, decision: Mapping[str, Any], ttl_s: float = DECISION_TTL_S) -> None:
        now = self._clock()
        self._expire(now)
        self._entries[call_sid] = (now + ttl_s, dict(decision))

    def take(self, call_sid: str) -> dict[str, Any] | None:
        entry = self._entries.pop(call_sid, None)
        if entry is None or entry[0] < self._clock():
            return None
        return entry[1]

    def get(self, call_sid: str) -> dict[str, Any] | None:
        entry = self._entries.get(call_sid)
        if entry is None or entry[0] < self._clock():
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        if len(self._entries) > 64:
            for sid in [sid for sid, (until, _) in self._entries.items() if until < now]:
                del self._entries[sid]


@dataclass(frozen=True, slots=True)
class Urls:
    """The public URLs Twilio is sent to (``https://.../twilio/...``, query added here)."""

    dial_done: str
    whisper: str


def action_twiml(
    decision: Mapping[str, Any] | None, agents: Callable[[str], Agent | None], urls: Urls
) -> str:
    """The TwiML that answers ``<Connect action>`` for a stored decision (None: unknown or expired)."""
    response = VoiceResponse()
    kind = decision.get("action") if decision is not None else None
    if decision is None or kind == "hangup":
        response.hangup()
        return str(response)
    if kind in ("apology", "shutdown"):
        response.say(SHUTTING_DOWN if kind == "shutdown" else APOLOGY)
        response.hangup()
        return str(response)
    agent = agents(str(decision.get("agent", "")))
    transfer = agent.transfer(str(decision.get("transfer", ""))) if agent is not None else None
    if agent is None or transfer is None:  # the agents file changed meanwhile
        response.say(NOBODY_ANSWERED)
        response.hangup()
        return str(response)
    response.append(dial_verb(agent, transfer, urls))
    return str(response)


def dial_verb(agent: Agent, transfer: Transfer, urls: Urls) -> Dial:
    """``<Dial>`` of ``transfer``: its timeout and caller ID, the whisper, the dial-done action."""
    where = urlencode({"agent": agent.key, "transfer": transfer.name})
    attributes: dict[str, Any] = {"action": f"{urls.dial_done}?{where}", "method": "POST",
                                  "timeout": transfer.timeout_s}  # fmt: skip
    if transfer.caller_id:
        attributes["caller_id"] = transfer.caller_id
    dial = Dial(**attributes)
    whisper = f"{urls.whisper}?{where}"
    if transfer.number is not None:
        dial.number(transfer.number, url=whisper, method="POST")
    elif transfer.sip is not None:
        dial.sip(transfer.sip, url=whisper, method="POST")
    return dial


def whisper_twiml(transfer: Transfer | None, summary: str | None) -> str:
    """Said to whoever answers a transfer before the caller is connected (nothing: an empty response)."""
    response = VoiceResponse()
    text = " ".join(part for part in ((transfer.whisper if transfer else None), summary) if part)
    if text:
        response.say(text)
    return str(response)


def dial_done_twiml(
    status: str, transfer: Transfer | None, fallback: Callable[[str], str | None]
) -> str:
    """After a transfer's dial: the call is over if it was answered; else the transfer's fallback.

    ``fallback(agent_key)`` is the ``<Connect><Stream>`` TwiML of another agent (None if it is gone)."""
    response = VoiceResponse()
    if status in ANSWERED_DIAL:
        response.hangup()
        return str(response)
    if transfer is not None and transfer.fallback_agent is not None:
        twiml = fallback(transfer.fallback_agent)
        if twiml is not None:
            return twiml
    message = transfer.fallback_message if transfer is not None and transfer.fallback_message else None
    response.say(message or NOBODY_ANSWERED)
    response.hangup()
    return str(response)
