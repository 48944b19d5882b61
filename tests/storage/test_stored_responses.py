"""Stored responses (the Responses API's `store`) on SQLite and a real PostgreSQL, through two
replicas' stores on one database: saved by one, read and deleted through the other; never another
account's; a response id fits the task store's key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.domain.principal import Principal
from kimiserve.domain.responses import StoredResponses
from kimiserve.errors import NotFound
from kimiserve.protocols.responses.translate import new_response_id
from kimiserve.storage.sql.accounts import SqlAccountStore
from kimiserve.storage.sql.database import open_database
from kimiserve.storage.sql.tasks import SqlTaskStore

ALICE = Principal(account_id="alice", key_id="k1")
BOB = Principal(account_id="bob", key_id="k2")


@pytest.fixture
async def engines(database_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    a = await open_database(database_url)
    b = await open_database(database_url)
    accounts = SqlAccountStore(a)
    for name in ("alice", "bob"):
        await accounts.create_account(name, name, "secret")
    yield a, b
    await a.dispose()
    await b.dispose()


async def test_saved_on_one_replica_read_and_deleted_on_another(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    here = StoredResponses(SqlTaskStore(engines[0], "replica-a"))
    there = StoredResponses(SqlTaskStore(engines[1], "replica-b"))
    response_id = new_response_id()
    assert len(response_id) <= 36  # tasks.task_uuid is VARCHAR(36): PostgreSQL enforces it
    response = {"id": response_id, "object": "response", "output": [{"type": "message", "id": "m"}]}
    inputs = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}], "id": "i"}
    ]
    context = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "before"}]}]
    await here.save(ALICE, response, inputs, context, "sync")
    found = await there.get(ALICE, response_id)
    assert found.response == response and found.input_items == inputs
    assert found.conversation() == [*context, *inputs, *response["output"]]  # type: ignore[list-item]
    for action in (there.get, there.delete):
        with pytest.raises(NotFound):
            await action(BOB, response_id)
    await there.delete(ALICE, response_id)
    with pytest.raises(NotFound) as gone:
        await here.get(ALICE, response_id, parameter="previous_response_id")
    assert gone.value.parameter == "previous_response_id"


async def test_a_running_or_other_task_is_not_a_response(engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    store = SqlTaskStore(engines[0], "replica-a")
    stored = StoredResponses(store)
    await store.create("3f1c1e9e-3a4b-4c5d-8e9f-0a1b2c3d4e5f", "alice", "textInference", "sync", {})
    with pytest.raises(NotFound):
        await stored.get(ALICE, "3f1c1e9e-3a4b-4c5d-8e9f-0a1b2c3d4e5f")
    assert not await store.delete("3f1c1e9e-3a4b-4c5d-8e9f-0a1b2c3d4e5f", "alice")  # still processing
    assert await store.get("3f1c1e9e-3a4b-4c5d-8e9f-0a1b2c3d4e5f") is not None
