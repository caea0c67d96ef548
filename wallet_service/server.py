"""Start-up of the wallet service: pool, token verifier, servicer, gRPC server, and the
periodic clean-up of expired idempotency keys."""

import asyncio
import contextlib
import logging
from typing import Any

import grpc
import psycopg_pool
from pydantic import SecretStr

from shared.db import open_pool
from shared.gen.wallet.v1 import wallet_pb2_grpc
from shared.server import RunningServer, start_server
from shared.tokens import TokenVerifier, grpc_key_source, grpc_revocation_source
from shared.transport import auth_channel, server_transport
from shared.workers import ALONE, Worker
from wallet_service import page_tokens
from wallet_service.authentication import AuthenticationInterceptor
from wallet_service.config import SERVICE_NAME, WalletSettings
from wallet_service.engine.runner import Engine, Limits
from wallet_service.event_feed import EventFeed
from wallet_service.metrics import sample_pool_periodically
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


async def start(settings: WalletSettings, worker: Worker = ALONE) -> RunningServer:
    pool = await open_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        name="wallet",
        statement_timeout_seconds=settings.statement_timeout_seconds,
        # A read is one round trip, not BEGIN, SELECT, COMMIT; money transactions send their
        # own BEGIN and COMMIT (engine/runner.py), and the rest use conn.transaction().
        autocommit=True,
    )
    channel_to_auth = auth_channel(settings, settings.auth_address, options=AUTH_CHANNEL_OPTIONS)
    verifier = _token_verifier(settings, channel_to_auth)
    verifier.start()
    page_tokens.configure(_page_token_secret(settings.page_token_secret), settings.max_page_size)
    feed = EventFeed(settings.database_url, pool)
    feed.start()
    engine = Engine(
        pool,
        Limits(
            lock_timeout_seconds=settings.lock_timeout_seconds,
            statement_timeout_seconds=settings.statement_timeout_seconds,
            serializable=settings.wallet_isolation_level == "serializable",
        ),
        events_committed=feed.events_committed,
        max_transactions=settings.wallet_max_transactions,
    )
    servicer = WalletServicer(
        pool,
        engine,
        feed,
        WatchSettings(settings.watch_heartbeat_seconds, settings.event_retention_days),
    )
    background = [asyncio.create_task(sample_pool_periodically(pool))] + (
        [
            asyncio.create_task(_clean_idempotency_keys_periodically(pool, settings)),
            asyncio.create_task(_sweep_expired_holds_periodically(engine, settings)),
            asyncio.create_task(_clean_events_periodically(pool, settings)),
        ]
        if worker.runs_background_jobs  # once per service, not once per worker
        else []
    )

    async def stop_background_work() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await engine.stop()
        await feed.stop()
        await verifier.close()
        await channel_to_auth.close(grace=None)

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
        transport=server_transport(settings),
        reuse_port=worker.shares_port,
    )


def _token_verifier(settings: WalletSettings, channel: grpc.aio.Channel) -> TokenVerifier:
    """Checks tokens locally with the auth service's keys and revocations, refreshed in the
    background; the last good ones stay in force while the auth service is unreachable."""
    return TokenVerifier(
        grpc_key_source(channel),
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        revocation_source=grpc_revocation_source(channel),
        refresh_interval_seconds=settings.revocation_refresh_seconds,
        max_token_lifetime_seconds=settings.token_max_lifetime_seconds,
    )


def _page_token_secret(secret: SecretStr | None) -> bytes | None:
    if secret is None:
        log.warning(
            "PAGE_TOKEN_SECRET is not set: page tokens work only on the instance that issued them"
        )
        return None
    return secret.get_secret_value().encode()


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


async def _sweep_expired_holds_periodically(engine: Engine, settings: WalletSettings) -> None:
    while True:
        await asyncio.sleep(settings.hold_sweep_interval_seconds)
        try:
            expired = await engine.sweep_expired_holds()
            if expired:
                log.info("marked expired holds", extra={"count": expired})
        except Exception:
            log.exception("expired hold sweep failed; will try again")
