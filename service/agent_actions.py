"""The keys of an agent that let it act: HTTP tools, MCP servers, call control, transfers, the keypad.

Read by :func:`service.agents.parse_agents` (each is inherited from ``[default]`` like the other keys,
a list replacing the inherited list whole)::

    call_control = ["end_call", "send_dtmf"]      # transfer_call comes with [[...transfers]]
    keypad = "model"                              # or "ignore"; or a table: mode, terminator,
                                                  #   digit_timeout_ms, max_digits
    [[numbers."+1…".tools]]
    name = "check_availability"                   # letters, digits, _ and -; at most 64
    description = "..."
    url = "https://bookings.example.com/availability"   # POST, JSON body, signed
    timeout_ms = 4000                             # default 5000
    filler = "One moment while I check that."     # optional
    headers = { Authorization = "Bearer ${BOOKINGS_TOKEN}" }   # ${VAR}: from the environment
    parameters = { type = "object", properties = { ... }, required = [...] }
    [[numbers."+1…".mcp]]
    server_label = "crm"
    server_url = "https://mcp.example.com/sse"
    allowed_tools = ["lookup_customer"]           # optional
    require_approval = "never"                    # default
    headers = { Authorization = "Bearer ${CRM_TOKEN}" }
    [[numbers."+1…".transfers]]
    name = "front_desk"                           # what the model says
    number = "+15551239876"                       # or sip = "sip:desk@pbx.example.com"
    description = "The front desk, for bookings the agent cannot make."
    whisper = "A caller from the booking line."   # optional: said to whoever answers
    caller_id = "+15551230001"                    # optional
    timeout_s = 20
    fallback_message = "Sorry, nobody can take your call right now. Goodbye."   # or:
    fallback_agent = "+15551230002"               # back to another agent (its key)

Every problem is reported with its key path; ``${VAR}`` that is not set is one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from service.core.agent import BUILTIN_TOOLS, CALL_CONTROL, Keypad, McpServer, Tool, Transfer

ACTION_KEYS = frozenset({"tools", "mcp", "call_control", "transfers", "keypad"})

_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_SIP = re.compile(r"sips?:[^\s@]+@[^\s@]+")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOOL_KEYS = frozenset({"name", "description", "url", "timeout_ms", "filler", "headers", "parameters"})
_MCP_KEYS = frozenset({"server_label", "server_url", "allowed_tools", "require_approval", "headers"})
_TRANSFER_KEYS = frozenset(
    {"name", "number", "sip", "description", "whisper", "caller_id", "timeout_s", "fallback_message",
     "fallback_agent"}
)  # fmt: skip
_KEYPAD_KEYS = frozenset({"mode", "terminator", "digit_timeout_ms", "max_digits"})


def parse_actions(
    raw: Mapping[str, Any], path: str, env: Mapping[str, str], problems: list[str]
) -> dict[str, Any]:
    """The valid acting keys of one table, as :class:`~service.core.agent.Agent` field values."""
    out: dict[str, Any] = {}
    if "tools" in raw:
        out["tools"] = _tools(raw["tools"], f"{path}.tools", env, problems)
    if "mcp" in raw:
        out["mcp"] = _list(raw["mcp"], f"{path}.mcp", problems, lambda t, p: _mcp(t, p, env, problems))
    if "transfers" in raw:
        transfers = _list(
            raw["transfers"], f"{path}.transfers", problems, lambda t, p: _transfer(t, p, problems)
        )
        names = [t.name for t in transfers]
        for name in {n for n in names if names.count(n) > 1}:
            problems.append(f"{path}.transfers: the name {name!r} is used twice")
        out["transfers"] = transfers
    if "call_control" in raw:
        control = raw["call_control"]
        if not isinstance(control, list) or not all(isinstance(v, str) for v in control):
            problems.append(f"{path}.call_control: must be a list of names")
        else:
            unknown = [v for v in control if v not in CALL_CONTROL]
            if unknown:
                known = ", ".join(sorted(CALL_CONTROL))
                problems.append(f"{path}.call_control: unknown {', '.join(unknown)} (known: {known})")
            out["call_control"] = frozenset(v for v in control if v in CALL_CONTROL)
    if "keypad" in raw:
        keypad = _keypad(raw["keypad"], f"{path}.keypad", problems)
        if keypad is not None:
            out["keypad"] = keypad
    return out


def _list(value: Any, path: str, problems: list[str], one: Any) -> tuple[Any, ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.append(f"{path}: must be an array of tables ([[{path}]])")
        return ()
    items = [one(table, f"{path}[{i}]") for i, table in enumerate(value)]
    return tuple(item for item in items if item is not None)


def _unknown(table: Mapping[str, Any], known: frozenset[str], path: str, problems: list[str]) -> None:
    for key in table:
        if key not in known:
            problems.append(f"{path}.{key}: unknown key")


def _text(
    table: Mapping[str, Any], key: str, path: str, problems: list[str], required: bool = True
) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            problems.append(f"{path}.{key}: required")
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{path}.{key}: must be a non-empty string")
        return None
    return value


def _int(
    table: Mapping[str, Any], key: str, path: str, problems: list[str], default: int, low: int, high: int
) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.append(f"{path}.{key}: must be an integer from {low} to {high}")
        return default
    return value


def _url(table: Mapping[str, Any], key: str, path: str, problems: list[str]) -> str | None:
    url = _text(table, key, path, problems)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"{path}.{key}: must be an http:// or https:// URL")
            return None
    return url


def _headers(value: Any, path: str, env: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        problems.append(f"{path}: must be a table of strings")
        return {}
    headers: dict[str, str] = {}
    for name, template in value.items():
        missing = [var for var in _VAR.findall(template) if not env.get(var)]
        if missing:
            problems.append(f"{path}.{name}: {', '.join('${' + v + '}' for v in missing)} not set")
            continue
        headers[name] = _VAR.sub(lambda m: env[m.group(1)], template)
    return headers


def _schema(value: Any, path: str, problems: list[str]) -> dict[str, Any] | None:
    """A JSON schema for the arguments: an object schema (``type = "object"``, ``properties`` a table)."""
    if value is None:
        return {"type": "object", "properties": {}}
    if not isinstance(value, dict) or value.get("type") != "object":
        problems.append(f'{path}: must be an object schema (type = "object")')
        return None
    properties = value.get("properties", {})
    if not isinstance(properties, dict) or not all(isinstance(v, dict) for v in properties.values()):
        problems.append(f"{path}.properties: must be a table of schemas")
        return None
    required = value.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) and r in properties for r in required):
        problems.append(f"{path}.required: must list names of properties")
        return None
    return dict(value)


def _tools(value: Any, path: str, env: Mapping[str, str], problems: list[str]) -> tuple[Tool, ...]:
    def one(table: dict[str, Any], where: str) -> Tool | None:
        _unknown(table, _TOOL_KEYS, where, problems)
        name = _text(table, "name", where, problems)
        if name is not None and not _TOOL_NAME.fullmatch(name):
            problems.append(f"{where}.name: letters, digits, _ and - only, at most 64")
            name = None
        if name in BUILTIN_TOOLS:
            problems.append(f"{where}.name: {name} is a built-in tool (see call_control)")
            name = None
        description = _text(table, "description", where, problems)
        url = _url(table, "url", where, problems)
        filler = _text(table, "filler", where, problems, required=False)
        timeout_ms = _int(table, "timeout_ms", where, problems, 5000, 100, 60_000)
        headers = _headers(table.get("headers"), f"{where}.headers", env, problems)
        parameters = _schema(table.get("parameters"), f"{where}.parameters", problems)
        if name is None or description is None or url is None or parameters is None:
            return None
        return Tool(name, description, url, parameters, timeout_ms, filler, headers)

    tools: tuple[Tool, ...] = _list(value, path, problems, one)
    names = [t.name for t in tools]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{path}: the tool name {name!r} is used twice")
    return tools


def _mcp(table: dict[str, Any], where: str, env: Mapping[str, str], problems: list[str]) -> McpServer | None:
    _unknown(table, _MCP_KEYS, where, problems)
    label = _text(table, "server_label", where, problems)
    url = _url(table, "server_url", where, problems)
    allowed = table.get("allowed_tools")
    if allowed is not None and not (isinstance(allowed, list) and all(isinstance(a, str) for a in allowed)):
        problems.append(f"{where}.allowed_tools: must be a list of tool names")
        allowed = None
    approval = table.get("require_approval", "never")
    if approval not in ("never", "always"):
        problems.append(f'{where}.require_approval: must be "never" or "always"')
        approval = "never"
    headers = _headers(table.get("headers"), f"{where}.headers", env, problems)
    if label is None or url is None:
        return None
    return McpServer(label, url, tuple(allowed) if allowed is not None else None, approval, headers)


def _transfer(table: dict[str, Any], where: str, problems: list[str]) -> Transfer | None:
    _unknown(table, _TRANSFER_KEYS, where, problems)
    name = _text(table, "name", where, problems)
    description = _text(table, "description", where, problems)
    number = _text(table, "number", where, problems, required=False)
    sip = _text(table, "sip", where, problems, required=False)
    if (number is None) == (sip is None):
        problems.append(f"{where}: give one of number (E.164) or sip (a SIP URI)")
    if number is not None and not _E164.fullmatch(number):
        problems.append(f"{where}.number: not an E.164 number (+ and 8-15 digits)")
        number = None
    if sip is not None and not _SIP.fullmatch(sip):
        problems.append(f"{where}.sip: not a SIP URI (sip:user@host)")
        sip = None
    caller_id = _text(table, "caller_id", where, problems, required=False)
    if caller_id is not None and not _E164.fullmatch(caller_id):
        problems.append(f"{where}.caller_id: not an E.164 number")
        caller_id = None
    whisper = _text(table, "whisper", where, problems, required=False)
    timeout_s = _int(table, "timeout_s", where, problems, 20, 5, 120)
    message = _text(table, "fallback_message", where, problems, required=False)
    agent = _text(table, "fallback_agent", where, problems, required=False)
    if name is None or description is None or (number is None and sip is None):
        return None
    return Transfer(name, description, number, sip, whisper, caller_id, timeout_s, message, agent)


def _keypad(value: Any, path: str, problems: list[str]) -> Keypad | None:
    if isinstance(value, str):
        value = {"mode": value}
    if not isinstance(value, dict):
        problems.append(f'{path}: must be "model", "ignore" or a table')
        return None
    _unknown(value, _KEYPAD_KEYS, path, problems)
    mode = value.get("mode", "model")
    if mode not in ("model", "ignore"):
        problems.append(f'{path}.mode: must be "model" or "ignore"')
        return None
    terminator = value.get("terminator", "#")
    if terminator not in ("#", "*", ""):
        problems.append(f'{path}.terminator: must be "#", "*" or "" (none)')
        return None
    timeout = _int(value, "digit_timeout_ms", path, problems, 2000, 500, 10_000)
    max_digits = _int(value, "max_digits", path, problems, 16, 1, 64)
    return Keypad(mode, terminator, timeout, max_digits)


def check_references(agents: Mapping[str, Any], problems: list[str]) -> None:
    """Cross-agent checks: a transfer's ``fallback_agent`` must name an agent of the file."""
    keys = set(agents)
    for key, agent in agents.items():
        for transfer in getattr(agent, "transfers", ()):
            if transfer.fallback_agent is not None and transfer.fallback_agent not in keys:
                problems.append(
                    f"{key}: transfer {transfer.name!r}: fallback_agent {transfer.fallback_agent!r} "
                    "is not an agent of the file"
                )
