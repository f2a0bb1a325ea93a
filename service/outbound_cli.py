"""``python -m service call …`` and ``python -m service numbers …``: outbound calls and numbers.

    python -m service call +15557650001 --agent +15551230001 [--from +1…] [--amd] [--param name=value …]
    python -m service numbers list
    python -m service numbers point +15551230001 [--agent KEY] [--dry-run]

The service's own settings are read (``.env``, then the environment): ``TWILIO_ACCOUNT_SID``,
``TWILIO_AUTH_TOKEN``, ``TWILIO_API_BASE_URL``, ``PUBLIC_BASE_URL``, ``AGENTS_FILE`` and the stream-token
settings (the token minted here is checked by the running service). ``OPENAI_API_KEY`` is not needed.

``call`` prints the new CallSid first on its line. ``numbers point`` sets the number's voice URL (POST),
voice fallback URL and status callback to ``PUBLIC_BASE_URL`` (``--agent``: that agent answers the
number, whatever the agents file says for it); ``--dry-run`` prints the change and makes none.

Errors are one line each on stderr (``error: …``), never a traceback: exit status 2 for bad settings,
arguments, agents or variables; 1 when Twilio refuses or cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

from service.agents import AgentBook, AgentStore
from service.config import Settings, load_settings
from service.core.placeholders import parse_assignments
from service.errors import ConfigError
from service.outbound import (
    POINTED_FIELDS,
    CallRequest,
    OutboundError,
    create_call,
    list_numbers,
    point_number,
    pointing,
    prepare,
    twilio_client,
)

__all__ = ["main"]

_NOT_NEEDED = {"OPENAI_API_KEY": "not-needed-by-the-command-line"}


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        environ = {**_NOT_NEEDED, **(os.environ if env is None else env)}
        settings = load_settings(environ, dotenv_path=None if env is not None else ".env")
        agents = AgentStore(settings.agents_file, env=env).book
        if args.command == "call":
            return _call(args, settings, agents, out)
        if args.action == "list":
            return _list(settings, agents, out)
        return _point(args, settings, agents, out)
    except ConfigError as exc:
        for problem in exc.problems:
            err.write(f"error: {exc.source}: {problem}\n")
        return 2
    except OutboundError as exc:
        for problem in exc.problems:
            err.write(f"error: {problem}\n")
        return 1 if exc.twilio_code is not None or exc.status >= 500 or exc.status == 404 else 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="Outbound calls and numbers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{call,numbers}")
    call = commands.add_parser("call", help="place an outbound call into an agent")
    call.add_argument("to", help="the number to call (E.164, e.g. +15557650001)")
    call.add_argument("--agent", required=True, help='the agent: "default" or its number in the agents file')
    call.add_argument("--from", dest="from_", help="the caller ID (default: the agent's number)")
    call.add_argument("--amd", action="store_true", help="answering-machine detection: leave a voicemail")
    call.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="fills {{NAME}} (repeatable)"
    )
    numbers = commands.add_parser("numbers", help="the account's numbers, pointed at this service")
    actions = numbers.add_subparsers(dest="action", required=True, metavar="{list,point}")
    actions.add_parser("list", help="the account's numbers and where their calls go")
    point = actions.add_parser("point", help="send a number's calls to this service")
    point.add_argument("number", help="one of the account's numbers (E.164)")
    point.add_argument("--agent", help="the agent that answers it (default: as the agents file says)")
    point.add_argument("--dry-run", action="store_true", help="print the change, make none")
    return parser


def _call(args: argparse.Namespace, settings: Settings, agents: AgentBook, out: TextIO) -> int:
    values, problems = parse_assignments(args.param)
    if problems:
        raise OutboundError(problems)
    request = CallRequest(to=args.to, agent=args.agent, from_=args.from_, params=values, amd=args.amd)
    placement = prepare(settings, agents, request, time.time(), via="cli")
    sid = create_call(twilio_client(settings), settings, placement)
    amd = ", answering-machine detection on" if placement.amd else ""
    out.write(f"{sid} queued: {placement.to} from {placement.from_}, agent {placement.agent.key}{amd}\n")
    return 0


def _list(settings: Settings, agents: AgentBook, out: TextIO) -> int:
    numbers = list_numbers(twilio_client(settings), settings)
    if not numbers:
        out.write("no numbers in this account\n")
        return 0
    ours = pointing(settings, None)["voice_url"]
    for number in numbers:
        url = number["voice_url"]
        where = "here" if url.split("?")[0] == ours else "elsewhere" if url else "not set"
        agent = agents.for_number(number["phone_number"])
        answers = agent.key if agent is not None else "-"
        pointed = parse_qs(urlsplit(url).query).get("agent")  # pointed at an agent: that agent answers
        if where == "here" and pointed:
            answers = pointed[0]
        out.write(f"{number['phone_number']:<16} {number['sid']}  {where:<9} agent {answers:<16} "
                  f"{url or '(no voice URL)'}\n")  # fmt: skip
    return 0


def _point(args: argparse.Namespace, settings: Settings, agents: AgentBook, out: TextIO) -> int:
    change = point_number(
        twilio_client(settings), settings, agents, args.number, agent_key=args.agent, dry_run=args.dry_run
    )
    out.write(f"{change.phone_number} ({change.sid}):\n")
    for name in POINTED_FIELDS:
        before, after = change.before.get(name) or "(none)", change.after[name]
        out.write(f"  {name:<22} {after}\n" if before == after else f"  {name:<22} {before}  ->  {after}\n")
    if not change.changed:
        out.write("already pointed here: nothing to change\n")
    elif change.applied:
        out.write(f"updated: {len(change.changed)} setting(s) changed\n")
    else:
        out.write(f"dry run: {len(change.changed)} setting(s) would change; nothing was changed\n")
    return 0
