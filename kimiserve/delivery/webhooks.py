"""Webhook delivery: a durable outbox and the worker that drains it.

A delivery is a row in the outbox before anything is sent, so a restart loses none. The worker
claims due rows (a lease, so replicas never double-send an attempt), POSTs the exact stored
body through the SSRF-safe fetcher (no redirects, bounded time), and on anything but a 2xx
schedules the next attempt with exponential backoff and jitter until the retry window (two days
by default) has passed. Every attempt of one delivery carries the same `webhook-id`.

Signing follows Standard Webhooks (https://www.standardwebhooks.com):
`webhook-signature: v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>`,
where the key is the account's `whsec_…` secret with its prefix removed, base64-decoded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from kimiserve.domain.ports import AccountStore, OutboxStore
from kimiserve.domain.ports import OutboxRow as Delivery
from kimiserve.media.fetch import FetchError, SafeFetcher

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
USER_AGENT = "kimiserve-webhooks/0.1"
_URLSAFE = str.maketrans("-_", "+/")


@dataclass(frozen=True)
class WebhookConfig:
    timeout_s: float = 10.0
    backoff_base_s: float = 5.0
    backoff_max_s: float = 3600.0
    retry_window_s: float = 2 * 86400.0
    concurrency: int = 8
    idle_poll_s: float = 5.0  # how often an idle worker looks for rows other replicas wrote


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (either base64 alphabet is accepted)."""
    text = secret.removeprefix(SECRET_PREFIX)
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded.translate(_URLSAFE), validate=True)
    except (binascii.Error, ValueError):
        return text.encode()  # not base64 at all: the text itself is the key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret_key(secret), f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(secret: str, message_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


def backoff_s(config: WebhookConfig, attempts: int) -> float:
    """Delay before attempt `attempts + 1`: exponential, capped, with "equal jitter"."""
    delay: float = min(config.backoff_max_s, config.backoff_base_s * 2.0 ** min(attempts, 32))
    return delay / 2 + random.uniform(0, delay / 2)


class WebhookOutbox:
    def __init__(
        self, store: OutboxStore, accounts: AccountStore, fetcher: SafeFetcher, config: WebhookConfig
    ) -> None:
        self.store = store
        self._accounts = accounts
        self._fetcher = fetcher
        self._config = config
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def enqueue(
        self, delivery_id: str, account_id: str, task_uuid: str, url: str, payload: dict[str, Any]
    ) -> None:
        """Record one delivery durably (idempotent per id) and nudge the worker."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        await self.store.enqueue(delivery_id, account_id, task_uuid, url, body)
        self._wake.set()

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="webhook-outbox")

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None

    async def _run(self) -> None:
        lease_s = 2 * self._config.timeout_s + 5.0  # a claimed row whose worker died is due again then
        while True:
            self._wake.clear()
            try:
                batch = await self.store.claim_due(self._config.concurrency, lease_s)
                if batch:
                    await asyncio.gather(*(self._attempt(d) for d in batch))
                    continue
                next_at = await self.store.next_due_at()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook outbox worker failed; retrying in a second")
                await asyncio.sleep(1.0)
                continue
            wait = self._config.idle_poll_s
            if next_at is not None:
                wait = min(wait, max(0.0, next_at - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            error = await self._send(delivery)
            if error is None:
                await self.store.mark_delivered(delivery.id)
                log.info("webhook %s delivered (attempt %d)", delivery.id, delivery.attempts + 1)
                return
            if time.time() - delivery.created_at >= self._config.retry_window_s:
                await self.store.mark_failed(delivery.id, error)
                log.warning(
                    "webhook %s given up after %d attempts: %s", delivery.id, delivery.attempts + 1, error
                )
                return
            delay = backoff_s(self._config, delivery.attempts)
            await self.store.retry_later(delivery.id, error, time.time() + delay)
            log.info(
                "webhook %s attempt %d failed (%s); next in %.1f s",
                delivery.id,
                delivery.attempts + 1,
                error,
                delay,
            )
        except asyncio.CancelledError:  # shutting down: the row is due again at the next start
            await asyncio.shield(self.store.release(delivery.id))
            raise
        except Exception:  # a bug or a storage failure: the lease expires and the row comes back
            log.exception("webhook %s attempt crashed", delivery.id)

    async def _send(self, delivery: Delivery) -> str | None:
        """None when the receiver took it (2xx); otherwise why not."""
        account = await self._accounts.get_account(delivery.account_id)
        if account is None:
            return "the account no longer exists"
        body = delivery.body.encode()
        headers = signed_headers(account.webhook_secret, delivery.id, body)
        try:
            status = await self._fetcher.post(delivery.url, body, headers, self._config.timeout_s)
        except FetchError as exc:
            return str(exc)
        return None if 200 <= status < 300 else f"HTTP {status}"


def delivery_id(task_uuid: str, suffix: str | int) -> str:
    """The `webhook-id` of one delivery of a task: stable, so enqueueing twice sends once."""
    return f"msg_{task_uuid.replace('-', '')}_{suffix}"
