"""Start-up of the wallet service: pool, token verifier, servicer, gRPC server, and the
periodic clean-up of expired idempotency keys."""

import asyncio
import contextlib
import logging
from typing import Any

import grpc
import psycopg
import psycopg_pool

from shared.db import open_pool
from shared.gen.wallet.v1 import wallet_pb2_grpc
from shared.server import RunningServer, start_server
from shared.tokens import TokenVerifier, grpc_key_source
from wallet_service.authentication import AuthenticationInterceptor
from wallet_service.config import SERVICE_NAME, WalletSettings
from wallet_service.engine.runner import Engine, Limits, sweep_expired_holds
from wallet_service.event_feed import EventFeed
from wallet_service.servicer import WalletServicer, WatchSettings
from wallet_service.store import events as events_store
from wallet_service.store import idempotency

log = logging.getLogger(__name__)

EVENT_CLEANUP_INTERVAL_SECONDS = 3600.0

# Reconnect to auth within about a second of its return (grpc's default backoff grows to
# two minutes, so tokens with a new key could fail long after an auth outage ended).
AUTH_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


async def _serializable(conn: psycopg.AsyncConnection[Any]) -> None:
    """Every transaction SERIALIZABLE, as on a distributed PostgreSQL-compatible engine; the
    ledger retries the serialization failures this brings."""
    await conn.set_isolation_level(psycopg.IsolationLevel.SERIALIZABLE)


async def start(settings: WalletSettings) -> RunningServer:
    pool = await open_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        name="wallet",
        configure=_serializable if settings.wallet_isolation_level == "serializable" else None,
    )
    auth_channel = grpc.aio.insecure_channel(settings.auth_address, options=AUTH_CHANNEL_OPTIONS)
    verifier = TokenVerifier(
        grpc_key_source(auth_channel),
        issuer=settings.token_issuer,
        audience=settings.token_audience,
    )
    feed = EventFeed(settings.database_url, pool)
    feed.start()
    engine = Engine(
        pool,
        Limits(
            lock_timeout_seconds=settings.lock_timeout_seconds,
            statement_timeout_seconds=settings.statement_timeout_seconds,
        ),
        events_committed=feed.events_committed,
    )
    servicer = WalletServicer(
        pool,
        engine,
        feed,
        WatchSettings(settings.watch_heartbeat_seconds, settings.event_retention_days),
    )
    background = [
        asyncio.create_task(_clean_idempotency_keys_periodically(pool, settings)),
        asyncio.create_task(_sweep_expired_holds_periodically(pool, settings, feed)),
        asyncio.create_task(_clean_events_periodically(pool, settings)),
    ]

    async def stop_background_work() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await feed.stop()
        await auth_channel.close(grace=None)

    return await start_server(
        service_name=SERVICE_NAME,
        add_servicer=lambda server: wallet_pb2_grpc.add_WalletServiceServicer_to_server(
            servicer, server
        ),
        address=settings.address,
        pool=pool,
        interceptors=[AuthenticationInterceptor(verifier)],
        health_check_interval=settings.health_check_interval_seconds,
        on_stop=[stop_background_work],
    )


async def _clean_idempotency_keys_periodically(
    pool: psycopg_pool.AsyncConnectionPool[Any], settings: WalletSettings
) -> None:
    while True:
        await asyncio.sleep(settings.idempotency_cleanup_interval_seconds)
        try:
            async with pool.connection() as conn:
                removed = await idempotency.delete_older_than(
                    conn, settings.idempotency_retention_hours
                )
            log.info("removed expired idempotency keys", extra={"count": removed})
        except Exception:
            log.exception("idempotency key clean-up failed; will try again")


async def _clean_events_periodically(
    pool: psycopg_pool.AsyncConnectionPool[Any], settings: WalletSettings
) -> None:
    while True:
        await asyncio.sleep(EVENT_CLEANUP_INTERVAL_SECONDS)
        try:
            async with pool.connection() as conn:
                removed = await events_store.delete_older_than(conn, settings.event_retention_days)
            log.info("removed old events", extra={"count": removed})
        except Exception:
            log.exception("event clean-up failed; will try again")


async def _sweep_expired_holds_periodically(
    pool: psycopg_pool.AsyncConnectionPool[Any], settings: WalletSettings, feed: EventFeed
) -> None:
    while True:
        await asyncio.sleep(settings.hold_sweep_interval_seconds)
        try:
            expired = await sweep_expired_holds(pool)
            if expired:
                feed.events_committed()
                log.info("marked expired holds", extra={"count": expired})
        except Exception:
            log.exception("expired hold sweep failed; will try again")
