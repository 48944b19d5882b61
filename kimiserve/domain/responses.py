"""Stored responses (the Responses API's `store` and `previous_response_id`), in the task store.

A stored response is one task row of type `response`, written once the response has ended: its
request column holds the conversation before it (`context`) and its own input items, its one
result the response object as the client got it. So it survives a restart and every replica
sharing the database sees it. Each row is self-contained: a response made with
`previous_response_id` copies the earlier conversation into its own context, so deleting an
earlier response never breaks a later one (at the cost of storing a long conversation once per
turn). Another account's response, or another task type, reads as not found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kimiserve.domain.ports import TaskExists, TaskStore
from kimiserve.domain.principal import Principal
from kimiserve.errors import Conflict, NotFound

TASK_TYPE = "response"


@dataclass(frozen=True)
class StoredResponse:
    id: str
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    context: list[dict[str, Any]]

    def conversation(self) -> list[dict[str, Any]]:
        """Every item up to and including this response's output, for a next turn."""
        output: list[dict[str, Any]] = self.response.get("output") or []
        return [*self.context, *self.input_items, *output]


class StoredResponses:
    def __init__(self, store: TaskStore) -> None:
        self.store = store

    async def save(
        self,
        principal: Principal,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        context: list[dict[str, Any]],
        delivery: str,
    ) -> None:
        response_id = str(response["id"])
        request = {"input": input_items, "context": context}
        try:
            await self.store.create(response_id, principal.account_id, TASK_TYPE, delivery, request)
        except TaskExists:
            raise Conflict(f"A response {response_id} is already stored.", code="conflict") from None
        await self.store.finish(response_id, results=[response])

    async def get(
        self, principal: Principal, response_id: str, parameter: str = "response_id"
    ) -> StoredResponse:
        row = await self.store.get(response_id)
        if (
            row is None
            or row.account_id != principal.account_id
            or row.task_type != TASK_TYPE
            or row.status != "success"
            or not row.results
        ):
            raise NotFound(
                f"No response with id '{response_id}' is stored for this account.",
                code="responseNotFound",
                parameter=parameter,
            )
        return StoredResponse(
            id=response_id,
            response=row.results[0],
            input_items=list(row.request.get("input") or []),
            context=list(row.request.get("context") or []),
        )

    async def delete(self, principal: Principal, response_id: str) -> None:
        await self.get(principal, response_id)  # another account's or another type's: not found
        await self.store.delete(response_id, principal.account_id)
