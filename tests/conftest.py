"""Shared fixtures: one real server process on the real model for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
