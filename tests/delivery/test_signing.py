"""Signing against the Standard Webhooks test vector; backoff; the outbox's claim and lease."""

from __future__ import annotations

import time
from pathlib import Path

from kimiserve.delivery.webhooks import WebhookConfig, backoff_s, delivery_id, sign, signed_headers
from kimiserve.storage.sql.database import open_database
from kimiserve.storage.sql.outbox import SqlOutboxStore


def test_standard_webhooks_vector() -> None:
    # The example of the Standard Webhooks / Svix documentation.
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers() -> None:
    headers = signed_headers("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_1", b"{}", now=1700000000.7)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    config = WebhookConfig(backoff_base_s=5, backoff_max_s=3600)
    for attempts in range(40):
        delay = backoff_s(config, attempts)
        full = min(3600, 5 * 2**attempts)
        assert full / 2 <= delay <= full
    # Retried for at least a day before the default window gives up.
    assert WebhookConfig().retry_window_s >= 86400


def test_delivery_ids_are_stable() -> None:
    task = "5f1c3a2e-0000-4000-8000-000000000001"
    assert delivery_id(task, 0) == delivery_id(task, 0) != delivery_id(task, 1)


async def test_outbox_claims_once_and_leases(tmp_path: Path) -> None:
    db = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    try:
        store = SqlOutboxStore(db)
        assert await store.enqueue("msg_a", "acct", "task", "https://example.com/h", "{}")
        assert not await store.enqueue("msg_a", "acct", "task", "https://example.com/h", "{}")
        [claimed] = await store.claim_due(10, lease_s=60)
        assert claimed.id == "msg_a"
        assert await store.claim_due(10, lease_s=60) == []  # leased: nobody else gets it
        await store.retry_later("msg_a", "HTTP 503", time.time() - 1)
        [again] = await store.claim_due(10, lease_s=60)
        assert again.attempts == 1 and again.last_error == "HTTP 503"
        await store.release("msg_a")
        [released] = await store.claim_due(10, lease_s=60)
        assert released.attempts == 1
        await store.mark_delivered("msg_a")
        assert await store.claim_due(10, lease_s=60) == []
        delivered = await store.get("msg_a")
        assert delivered is not None and delivered.status == "delivered" and delivered.attempts == 2
    finally:
        await db.dispose()
