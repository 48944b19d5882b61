"""Real PostgreSQL and Redis servers for tests: temporary data directories, free loopback ports.

PostgreSQL refuses to run as root (CI runs as root), so there it runs as the `postgres` user the
Debian package creates (or `nobody`). Nothing here is mocked: the stores under test talk to the
real servers through asyncpg and redis-py.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.serverproc import free_port

PG_BIN_DIRS = [Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)] + [
    Path("/usr/local/bin"),
    Path("/usr/bin"),
]


def _pg_tool(name: str) -> str | None:
    for folder in PG_BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return None


def _as_user() -> list[str]:
    """The prefix that runs a PostgreSQL tool as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"]
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


@dataclass
class PostgresServer:
    root: Path
    port: int
    user: str = "kimiserve"

    @classmethod
    def start(cls) -> PostgresServer:
        initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        root = Path(tempfile.mkdtemp(prefix="kimiserve-pg-"))
        prefix = _as_user()
        if prefix:
            shutil.chown(root, user=prefix[2])
        data = root / "data"
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-U", "kimiserve", "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        port = free_port()
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return cls(root, port)

    def _psql(self, sql: str) -> None:
        psql = _pg_tool("psql")
        assert psql is not None
        subprocess.run(
            [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres", "-c", sql],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def create_database(self) -> str:
        """A new, empty database; its SQLAlchemy asyncpg URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        self._psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        pg_ctl = _pg_tool("pg_ctl")
        assert pg_ctl is not None
        subprocess.run(
            [*_as_user(), pg_ctl, "-D", str(self.root / "data"), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class RedisServer:
    root: Path
    port: int
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("Redis is not installed (apt-get install redis-server)")
        root = Path(tempfile.mkdtemp(prefix="kimiserve-redis-"))
        port = free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = cls(root, port, proc)
        deadline = time.monotonic() + 30
        import socket

        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return server
            except OSError:
                time.sleep(0.05)
        server.stop()
        raise RuntimeError("redis-server did not start")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)
