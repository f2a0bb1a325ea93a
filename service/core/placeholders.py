"""Per-call variables: ``{{name}}`` placeholders in an agent's instructions, greeting and voicemail message,
filled with the values given when a call is placed (``--param name=value``, the API's ``params``). Pure.

    problems = check(agent, {"customer": "Ada", "day": "Tuesday"})   # [] when every name matches
    agent = fill_agent(agent, values)                                 # the agent this call runs

Rules: a name is a letter or ``_`` then letters, digits and ``_`` (at most 64); ``{{ name }}`` may have
spaces inside the braces. A value the agent has no placeholder for is an error, as is a placeholder left
without a value; a value is at most :data:`MAX_VALUE_CHARS` characters (Twilio's ``<Parameter>`` limit:
the values travel to the stream as ``<Parameter>``\\ s). Problems name the variable, never its value:
values are personal data (a customer's name, an appointment) and are never logged at INFO.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace

from service.core.agent import Agent

__all__ = [
    "MAX_VALUE_CHARS",
    "PARAMETER_PREFIX",
    "check",
    "fill",
    "fill_agent",
    "from_parameters",
    "names_in",
    "parse_assignments",
    "placeholders_of",
    "to_parameters",
    "token_subject",
]

MAX_VALUE_CHARS = 500
"""The longest value (Twilio: a ``<Parameter>``'s name and value must stay under 500 characters)."""
PARAMETER_PREFIX = "var_"
"""A value travels to the stream as ``<Parameter name="var_<name>">``."""
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")


def names_in(text: str | None) -> set[str]:
    """The placeholder names in ``text``."""
    return set(_PLACEHOLDER.findall(text)) if text else set()


def placeholders_of(agent: Agent) -> frozenset[str]:
    """Every placeholder name of ``agent`` (instructions, greeting, voicemail message)."""
    texts = (agent.instructions, agent.greeting, agent.voicemail_message)
    return frozenset(name for text in texts for name in names_in(text))


def check(agent: Agent, values: Mapping[str, str]) -> list[str]:
    """What is wrong with ``values`` for ``agent`` (one line each; values never shown)."""
    problems: list[str] = []
    wanted = placeholders_of(agent)
    for name in sorted(values):
        if not _NAME.fullmatch(name):
            problems.append(f"param {name[:64]!r}: not a valid name (letters, digits and _, at most 64)")
        elif name not in wanted:
            known = ", ".join(sorted(wanted)) or "none"
            problems.append(
                f"param {name}: the agent {agent.key} has no {{{{{name}}}}} (its placeholders: {known})"
            )
        elif len(values[name]) > MAX_VALUE_CHARS:
            problems.append(f"param {name}: {len(values[name])} characters (at most {MAX_VALUE_CHARS})")
        elif len(PARAMETER_PREFIX + name) + len(values[name]) >= MAX_VALUE_CHARS:
            limit = MAX_VALUE_CHARS - len(PARAMETER_PREFIX + name) - 1
            problems.append(
                f"param {name}: {len(values[name])} characters (at most {limit} for this name: Twilio's "
                f"<Parameter> limit counts the name too)"
            )
    for name in sorted(wanted - set(values)):
        problems.append(f"param {name}: missing (the agent {agent.key} uses {{{{{name}}}}})")
    return problems


def fill(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each placeholder replaced by its value ("" when it has none)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), text)


def fill_agent(agent: Agent, values: Mapping[str, str]) -> Agent:
    """``agent`` with its instructions, greeting and voicemail message filled (itself if it has none)."""
    if not placeholders_of(agent):
        return agent
    greeting = fill(agent.greeting, values) if agent.greeting is not None else None
    voicemail = fill(agent.voicemail_message, values) if agent.voicemail_message is not None else None
    return replace(
        agent, instructions=fill(agent.instructions, values), greeting=greeting or None,
        voicemail_message=voicemail or None,
    )  # fmt: skip


def parse_assignments(items: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """``["name=value", ...]`` (the command line's ``--param``) as a dict, and the problems."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name:
            problems.append(f"--param {name[:64] or '?'}: expected name=value")
        elif name in values:
            problems.append(f"--param {name}: given twice")
        else:
            values[name] = value
    return values, problems


def to_parameters(values: Mapping[str, str]) -> dict[str, str]:
    """The values as stream ``<Parameter>``\\ s (``var_<name>``)."""
    return {PARAMETER_PREFIX + name: value for name, value in sorted(values.items())}


def from_parameters(parameters: Mapping[str, str]) -> dict[str, str]:
    """The values a stream's ``start.customParameters`` carry (see :func:`to_parameters`)."""
    n = len(PARAMETER_PREFIX)
    return {name[n:]: value for name, value in parameters.items() if name.startswith(PARAMETER_PREFIX)}


def token_subject(agent_key: str, values: Mapping[str, str]) -> str:
    """What a stream token binds besides the call: the agent, and the values if there are any (so that
    they cannot be changed on the way). Without values it is the agent key, as for an inbound call."""
    if not values:
        return agent_key
    digest = hashlib.sha256(json.dumps(sorted(values.items()), ensure_ascii=False).encode()).hexdigest()
    return f"{agent_key}\n{digest}"
