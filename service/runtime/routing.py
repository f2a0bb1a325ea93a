"""Where each command of a call goes, written once for the bridge and the replay. Pure.

Peer commands become :class:`Outgoing` wire text (the model's event ids numbered per socket, ``evt_1``,
``evt_2``..., so that what one socket is sent does not depend on when another one opened); control
commands are returned as they are, for the caller to carry out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

from service.core.commands import Command, Control, ToModel
from service.wire import realtime, twilio

Peer = Literal["twilio", "realtime"]


# Hot path: not frozen (a frozen dataclass pays object.__setattr__ per field, ~1 us a message);
# treated as immutable all the same.
@dataclass(slots=True)
class Outgoing:
    """One text frame for a peer: Twilio, or model socket ``link``."""

    peer: Peer
    text: str
    link: int = 0


class Router:
    """Serializes one call's peer commands; hands control commands back."""

    def __init__(self) -> None:
        self._event_ids: dict[int, itertools.count[int]] = {}

    def route(self, command: Command) -> Outgoing | Control:
        match command:
            case ToModel(link=link, command=model_command):
                ids = self._event_ids.get(link)
                if ids is None:
                    ids = self._event_ids[link] = itertools.count(1)
                text = realtime.serialize(model_command, f"evt_{next(ids)}")
                return Outgoing("realtime", text, link)
            case twilio.SendMedia() | twilio.SendMark() | twilio.SendClear():
                return Outgoing("twilio", twilio.serialize(command))
            case _:
                return command
