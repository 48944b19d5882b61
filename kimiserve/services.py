"""The one typed container of what a running server holds, built and closed by the app."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from kimiserve.delivery.tasks import TaskDelivery, notify_interrupted_webhook
from kimiserve.delivery.webhooks import WebhookConfig, WebhookOutbox
from kimiserve.domain.admission import Admissions
from kimiserve.domain.inference import Inference
from kimiserve.domain.principal import Principal
from kimiserve.domain.replicas import Ownership
from kimiserve.domain.served import ServedModel, ServedModels, with_stand_ins
from kimiserve.domain.tasks import Tasks
from kimiserve.engines.base import Engine
from kimiserve.http.context import Context
from kimiserve.http.metrics import Metrics
from kimiserve.media.fetch import AddressPolicy, SafeFetcher
from kimiserve.media.resolve import Resolver
from kimiserve.media.uploads import MediaStore
from kimiserve.platform.accounts import Accounts
from kimiserve.platform.admin import Admin
from kimiserve.platform.api_keys import ApiKeys
from kimiserve.platform.error_log import ErrorLog
from kimiserve.platform.prices import FREE, Price
from kimiserve.platform.rate_limits import RateLimiter
from kimiserve.platform.shared_redis import KeyChanges, SharedRedis, TaskBus, publish_key_change
from kimiserve.settings import Settings
from kimiserve.storage.sql.accounts import SqlAccountStore
from kimiserve.storage.sql.database import open_database
from kimiserve.storage.sql.error_counts import SqlErrorCounts
from kimiserve.storage.sql.ledger import SqlLedgerStore
from kimiserve.storage.sql.media import SqlMediaStore
from kimiserve.storage.sql.outbox import SqlOutboxStore
from kimiserve.storage.sql.sqlite_ledger import SqliteLedgerStore
from kimiserve.storage.sql.tasks import SqlTaskStore
from kimiserve.storage.sql.usage import SqlUsageStore
from kimiserve.tools.builtin import build_registry as build_tool_registry

log = logging.getLogger(__name__)


@dataclass
class Platform:
    """Storage-backed services, without any engine: what the CLI needs."""

    db: AsyncEngine
    account_store: SqlAccountStore
    accounts: Accounts
    keys: ApiKeys
    usage: SqlUsageStore
    ledger: SqlLedgerStore | SqliteLedgerStore
    tasks: Tasks
    admin: Admin
    redis: SharedRedis | None = None  # the CLI's, to announce key changes to the replicas

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        await self.tasks.aclose()
        if isinstance(self.ledger, SqliteLedgerStore):
            await self.ledger.aclose()
        await self.db.dispose()


async def open_platform(settings: Settings, *, announce_key_changes: bool = False) -> Platform:
    """The storage-backed services. `announce_key_changes` (the CLI): with Redis, a change to a
    key or an account made here is announced, so every replica's key cache forgets it at once."""
    url = settings.resolved_database_url()
    db = await open_database(url)
    store = SqlAccountStore(db)
    accounts = Accounts(store)
    keys = ApiKeys(store, cache_s=settings.key_cache_s)
    redis = SharedRedis(settings.redis_url) if announce_key_changes and settings.redis_url else None
    if redis is not None:
        keys.publish = functools.partial(publish_key_change, redis)
    usage = SqlUsageStore(db)
    sqlite_path = db.url.database if db.dialect.name == "sqlite" and db.url.database != ":memory:" else None
    owner = settings.resolved_replica_id()
    # One SQLite file, one writer at a time: the hot path's writers (tasks, ledger) queue on one
    # lock in this process rather than in SQLite's busy handler.
    write_lock = asyncio.Lock() if sqlite_path else None
    ledger = SqliteLedgerStore(sqlite_path, owner, write_lock) if sqlite_path else SqlLedgerStore(db, owner)
    return Platform(
        db=db,
        account_store=store,
        accounts=accounts,
        keys=keys,
        usage=usage,
        ledger=ledger,
        tasks=Tasks(SqlTaskStore(db, owner, settings.task_lease_s, write_lock)),
        admin=Admin(store, ledger, usage, accounts, keys),
        redis=redis,
    )


@dataclass
class Services:
    settings: Settings
    platform: Platform
    registry: ServedModels
    admissions: Admissions  # capacity, limits and credit: what the front door admits with
    metrics: Metrics
    default_principal: Principal  # used only in open mode
    fetcher: SafeFetcher  # the only way to reach a URL a client gave us
    media: MediaStore
    webhooks: WebhookOutbox
    inference: Inference  # the front door every protocol runs inference through
    delivery: TaskDelivery  # sync / async / webhook task deliveries over the front door
    ownership: Ownership | None = None  # task leases across replicas (issue 13)
    error_log: ErrorLog | None = None  # refused/failed requests per minute, for the dashboard
    shared_redis: SharedRedis | None = None  # KIMISERVE_REDIS_URL (issue 13)
    key_changes: KeyChanges | None = None  # with Redis: key cache invalidations across replicas

    @property
    def tasks(self) -> Tasks:
        return self.platform.tasks

    @property
    def keys(self) -> ApiKeys:
        return self.platform.keys

    @property
    def admin(self) -> Admin:
        return self.platform.admin

    def begin_shutdown(self) -> None:
        """Stop admitting: from now on a cancelled generation is a shutdown, never charged."""
        self.admissions.shutting_down = True
        self.platform.tasks.shutting_down = True

    async def aclose(self) -> None:
        self.begin_shutdown()
        if self.ownership is not None:
            await self.ownership.aclose()
        await self.webhooks.aclose()
        if self.error_log is not None:
            await self.error_log.aclose()
        await self.platform.aclose()
        if self.key_changes is not None:
            await self.key_changes.aclose()
        if self.shared_redis is not None:
            await self.shared_redis.aclose()
        await self.fetcher.aclose()
        if self.admissions.tools is not None:
            await self.admissions.tools.aclose()
        for engine in self.registry.engines():
            await engine.aclose()


def build_embedded_engine(settings: Settings) -> tuple[Engine, str]:
    """The embedded engine and the id its own model is served under."""
    if settings.engine == "fake":
        from kimiserve.engines.fake import FakeEngine

        return FakeEngine(delay_s=settings.fake_delay_s), "fake-echo"
    from kimiserve.engines.llamacpp import LlamaCppConfig, LlamaCppEngine, default_model_path

    path = settings.model_path or default_model_path()
    config = LlamaCppConfig(
        model_path=path,
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        max_sequences=settings.max_sequences,
        max_waiting=settings.max_waiting,
        deterministic=settings.deterministic,
        isolated=settings.engine_isolated,
    )
    model_id = Path(path).name.removesuffix(".gguf").split(".")[0].lower()
    return LlamaCppEngine(config), model_id


def build_registry(settings: Settings, engine: Engine, model_id: str) -> ServedModels:
    """The served models: those of the models file (when set) first, then the embedded model under
    its own id; the embedded model answers for Kimi K2.6's names only when no file model takes them."""
    embedded = ServedModel(id=model_id, aliases=(), engine=engine, price=FREE)
    served: list[ServedModel] = []
    if settings.models_file is not None:
        from kimiserve.config import models_file

        for built in models_file.build(models_file.load(settings.models_file)):
            entry = built.entry
            price = Price.from_usd(entry.price.input, entry.price.output, entry.price.cached)
            served.append(ServedModel(entry.id, entry.aliases, built.engine, price, owned_by=entry.owned_by))
            log.info("serving %s from %s", entry.id, ", ".join(u.url for u in entry.upstreams))
    kimi_price = Price.from_usd(
        settings.price_input_per_million,
        settings.price_output_per_million,
        settings.price_cached_per_million,
    )
    return with_stand_ins(served, embedded, kimi_price)


def build_fetcher(settings: Settings) -> SafeFetcher:
    return SafeFetcher(
        AddressPolicy.allowing(settings.allow_private_hosts),
        timeout_s=settings.fetch_timeout_s,
        max_bytes=settings.fetch_max_bytes,
    )


def build_webhooks(settings: Settings, platform: Platform, fetcher: SafeFetcher) -> WebhookOutbox:
    config = WebhookConfig(
        timeout_s=settings.webhook_timeout_s,
        backoff_base_s=settings.webhook_backoff_base_s,
        backoff_max_s=settings.webhook_backoff_max_s,
        retry_window_s=settings.webhook_retry_window_s,
        concurrency=settings.webhook_concurrency,
    )
    return WebhookOutbox(SqlOutboxStore(platform.db), platform.account_store, fetcher, config)


async def build_services(settings: Settings) -> Services:
    platform = await open_platform(settings)
    fetcher = build_fetcher(settings)
    webhooks = build_webhooks(settings, platform, fetcher)
    ownership = Ownership(
        platform.tasks,
        platform.ledger,
        settings.resolved_replica_id(),
        settings.task_lease_s,
        lambda row: notify_interrupted_webhook(webhooks, row),
    )
    shared = SharedRedis(settings.redis_url) if settings.redis_url else None
    key_changes: KeyChanges | None = None
    if shared is not None:  # first, so the tasks recovery ends wake their waiters on other replicas
        platform.tasks.bus = TaskBus(shared)
        await platform.tasks.bus.start()
        key_changes = KeyChanges(shared, platform.keys)
        await key_changes.start()
        platform.keys.publish = functools.partial(publish_key_change, shared)
    await ownership.recover()
    account = await platform.accounts.get_or_create()
    engine, model_id = build_embedded_engine(settings)
    registry = build_registry(settings, engine, model_id)
    metrics = Metrics(registry)
    admissions = Admissions(
        registry,
        platform.ledger,
        RateLimiter(
            shared.limits_storage() if shared is not None else None,
            window_s=settings.rate_limit_window_s,
        ),
        platform.account_store,
        metrics,
        max_waiting=settings.max_waiting,
        tools=build_tool_registry(settings),
        max_tool_rounds=settings.tool_max_rounds,
    )
    media = MediaStore(
        settings.data_dir / "media", SqlMediaStore(platform.db), fetcher, settings.fetch_max_bytes
    )
    inference = Inference(admissions, Resolver(media))
    error_log = ErrorLog(SqlErrorCounts(platform.db), settings.error_log_flush_s)
    metrics.error_sink = error_log.record
    services = Services(
        settings=settings,
        platform=platform,
        registry=registry,
        admissions=admissions,
        metrics=metrics,
        default_principal=Principal(account_id=account.id, key_id="open-mode"),
        fetcher=fetcher,
        media=media,
        webhooks=webhooks,
        inference=inference,
        delivery=TaskDelivery(inference, platform.tasks, webhooks),
        ownership=ownership,
        error_log=error_log,
        shared_redis=shared,
        key_changes=key_changes,
    )
    webhooks.start()
    ownership.start()
    error_log.start()
    return services


def as_context(services: Services) -> Context:
    """What the protocols see of the services (and mypy's check that Services provides it)."""
    return services
