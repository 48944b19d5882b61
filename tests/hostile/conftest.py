"""The hostile suite's servers: the fake engine (the input boundary is the point, not the model)
with two accounts, a small body cap and a fast key re-check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess, create_key

BODY_CAP = 1024 * 1024


@pytest.fixture(scope="session")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="session")
def keys(hostile_dir: Path) -> dict[str, str]:
    """Two accounts, alice and bob, one key each."""
    return {name: create_key(hostile_dir, account=name, name=name) for name in ("alice", "bob")}


@pytest.fixture(scope="session")
def fake_server(hostile_dir: Path, keys: dict[str, str]) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        hostile_dir,
        env={
            "KIMISERVE_ENGINE": "fake",
            "KIMISERVE_MAX_BODY_BYTES": str(BODY_CAP),
            "KIMISERVE_WS_KEY_RECHECK_S": "1",
            "KIMISERVE_ALLOW_PRIVATE_HOSTS": "127.0.0.1",
        },
    )
    proc.start()
    yield proc
    proc.stop()
    log = proc.output()
    assert "Traceback" not in log, log[-4000:]
