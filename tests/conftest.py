"""Shared fixtures: one real server process on the real model for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dbservers import PostgresServer, RedisServer
from tests.serverproc import ServerProcess, create_key


@pytest.fixture(scope="session")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="session")
def api_key(server_dir: Path) -> str:
    return create_key(server_dir, name="session")


@pytest.fixture(scope="session")
def other_key(server_dir: Path) -> str:
    """A key of a different account."""
    return create_key(server_dir, account="other", name="other")


@pytest.fixture(scope="session")
def server(server_dir: Path, api_key: str, other_key: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(server_dir)
    proc.start()
    yield proc
    proc.stop()


# ---- real PostgreSQL and Redis (issue 13): every storage-facing test runs on SQLite and PostgreSQL


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database for one test: a SQLite file, or a database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()
