"""The phase of a call: one value instead of a handful of flags.

    awaiting start -> authorizing -> connecting -> configuring -> live -> (ending ->) ended
                                                       ^              |
                                                       +- reconnecting <- (model socket lost)

- awaiting start: the Twilio socket is accepted; the model socket is being pre-warmed.
- authorizing: ``start`` arrived; its token is being checked (outside the core).
- connecting: authorized; no configured model socket yet: the caller's audio is held.
- configuring: ``session.update`` sent: audio flows; ``session.updated`` not seen yet.
- live: the session confirmed its configuration.
- reconnecting: the model socket was lost mid-call: the caller's audio is dropped (and counted)
  until a new session is configured.
- ending: the agent ended the call (``end_call``, ``transfer_call``): it ends once its last words are
  heard. No rollover; a model socket lost now ends the call with the agent's decision.
- ended: final; nothing more is done.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    AWAITING_START = "awaiting start"
    AUTHORIZING = "authorizing"
    CONNECTING = "connecting"
    CONFIGURING = "configuring"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    ENDING = "ending"
    ENDED = "ended"
