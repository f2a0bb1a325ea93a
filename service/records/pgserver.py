"""A throwaway PostgreSQL server from the system's binaries, for tests and benchmarks.

    with TempPostgres() as pg:       # initdb in a temporary folder, then a server on 127.0.0.1:<free port>
        url = pg.url                 # postgresql://dialtone@127.0.0.1:PORT/dialtone
        pg.stop(); pg.start()        # an outage, and the same data back

The binaries are Debian's (``apt-get install postgresql``: ``/usr/lib/postgresql/<version>/bin``) or any
``initdb`` / ``pg_ctl`` on PATH. ``initdb`` refuses to run as root: as root the server runs as the
``postgres`` user the Debian package creates. No fsync (test data; a stopped server keeps its commits).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresUnavailable", "TempPostgres", "find_bin_dir"]

DATABASE = "dialtone"
USER = "dialtone"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries here, or the server would not start (the message says which)."""


def find_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: the newest Debian version, else PATH."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: _version(p.parent.parent.name)
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TempPostgres:
    def __init__(self, port: int | None = None) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresUnavailable("no PostgreSQL binaries (apt-get install postgresql)")
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dialtone-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise PostgresUnavailable(
                    "running as root and no runuser to start PostgreSQL as another user"
                )
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root and no 'postgres' user to run PostgreSQL"
                ) from None
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres", "postgres")
        self._initdb()
        self.start()
        self._createdb()

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def __enter__(self) -> TempPostgres:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            "-c full_page_writes=off -c max_connections=50"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "30", "start"
        )

    def stop(self) -> None:
        """Stop the server now (``-m immediate``: like a crash, clients cut off)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        result = subprocess.run(
            [*self._as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def close(self) -> None:
        if self.data.exists() and self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync")

    def _createdb(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            result = subprocess.run(
                [
                    *self._as,
                    str(self.bin_dir / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    USER,
                    DATABASE,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"createdb failed: {result.stderr.strip()}")
            time.sleep(0.2)

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [*self._as, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.root,
        )
        if result.returncode != 0:
            log_tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(
                f"{tool} failed: {result.stderr.strip() or result.stdout.strip()}\n{log_tail}"
            )
