"""The core and the wire formats stay pure: no asyncio, clock, environment, sockets or web frameworks.

The check walks the import statements of every module in ``service/core`` and ``service/wire`` (and of
every ``service`` module they import, transitively), so a forbidden import anywhere below them fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[1] / "service"
PURE_PACKAGES = ("core", "wire")
FORBIDDEN = {
    "asyncio", "time", "os", "socket", "selectors", "ssl", "threading", "subprocess", "signal",
    "datetime", "http", "urllib", "aiohttp", "httpx", "requests", "websockets", "wsproto", "h11",
    "quart", "hypercorn", "werkzeug", "dotenv", "sqlalchemy", "twilio", "openai",
}  # fmt: skip


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_path(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "service":
        return None
    base = SERVICE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def closure(start: Path) -> dict[Path, set[str]]:
    """Every service module reachable from ``start``, with its imports."""
    seen: dict[Path, set[str]] = {}
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen[path] = imports_of(path)
        todo += [p for name in seen[path] if (p := module_path(name)) is not None]
    return seen


PURE_MODULES = sorted(p for pkg in PURE_PACKAGES for p in (SERVICE / pkg).glob("*.py"))


@pytest.mark.parametrize("path", PURE_MODULES, ids=[f"{p.parent.name}/{p.name}" for p in PURE_MODULES])
def test_pure_modules_import_nothing_impure(path: Path) -> None:
    problems = [
        f"{p.relative_to(SERVICE.parent)} imports {name}"
        for p, names in closure(path).items()
        for name in sorted(names)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert problems == []


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom time import monotonic\n", encoding="utf-8")
    assert {"asyncio", "time"} <= {n.split(".")[0] for n in imports_of(bad)}


def test_the_pure_packages_are_where_the_decisions_are() -> None:
    names = {p.stem for p in PURE_MODULES}
    assert {"call", "uplink", "playout", "playback", "session", "conversation", "audio"} <= names
    assert {"twilio", "realtime", "fields"} <= names
