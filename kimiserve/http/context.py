"""What the protocols and the HTTP helpers are given to work with.

A structural type: the protocols depend on this, never on the composition root
(`kimiserve/services.py`), which builds the one object that satisfies it (`Services`). Every
inference request goes through `inference`; the rest is what rendering and the non-inference tasks need.
"""

from __future__ import annotations

from typing import Any, Protocol

from kimiserve.delivery.tasks import TaskDelivery
from kimiserve.domain.inference import Inference
from kimiserve.domain.principal import Principal
from kimiserve.domain.served import ServedModels
from kimiserve.domain.tasks import Tasks
from kimiserve.media.uploads import MediaStore
from kimiserve.platform.admin import Admin
from kimiserve.settings import Settings


class RequestCounter(Protocol):
    def request(self, protocol: str, task_type: str, status: str) -> None: ...


class Authenticator(Protocol):
    async def authenticate(self, key: str | None) -> Principal: ...


class UrlChecker(Protocol):
    async def check_url(self, url: str) -> Any: ...


class WebhookQueue(Protocol):
    async def enqueue(
        self, delivery_id: str, account_id: str, task_uuid: str, url: str, payload: dict[str, Any]
    ) -> None: ...


class Context(Protocol):
    @property
    def settings(self) -> Settings: ...
    @property
    def inference(self) -> Inference:
        """The front door: every inference request runs through it."""

    @property
    def delivery(self) -> TaskDelivery:
        """Sync / async / webhook deliveries of a task (and its record)."""

    @property
    def tasks(self) -> Tasks: ...
    @property
    def registry(self) -> ServedModels: ...
    @property
    def metrics(self) -> RequestCounter: ...
    @property
    def keys(self) -> Authenticator: ...
    @property
    def admin(self) -> Admin: ...
    @property
    def media(self) -> MediaStore: ...
    @property
    def fetcher(self) -> UrlChecker: ...
    @property
    def webhooks(self) -> WebhookQueue: ...
    @property
    def default_principal(self) -> Principal:
        """The account open mode serves (no key)."""
