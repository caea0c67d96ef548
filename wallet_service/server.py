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
from wallet_service import page_tokens
from wallet_service import repository as repo
from wallet_service.authentication import AuthenticationInterceptor
from wallet_service.config import SERVICE_NAME, WalletSettings
from wallet_service.ledger import Limits
from wallet_service.servicer import WalletServicer

log = logging.getLogger(__name__)


async def start(settings: WalletSettings) -> RunningServer:
    pool = await open_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        name="wallet",
        statement_timeout_seconds=settings.statement_timeout_seconds,
    )
    channel_to_auth = auth_channel(settings, settings.auth_address)
    verifier = _token_verifier(settings, channel_to_auth)
    verifier.start()
    page_tokens.configure(_page_token_secret(settings.page_token_secret), settings.max_page_size)
    servicer = WalletServicer(
        pool,
        Limits(
            lock_timeout_seconds=settings.lock_timeout_seconds,
            statement_timeout_seconds=settings.statement_timeout_seconds,
        ),
    )
    cleanup = asyncio.create_task(_clean_idempotency_keys_periodically(pool, settings))

    async def stop_background_work() -> None:
        cleanup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cleanup
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
                removed = await repo.delete_idempotency_keys_older_than(
                    conn, settings.idempotency_retention_hours
                )
            log.info("removed expired idempotency keys", extra={"count": removed})
        except Exception:
            log.exception("idempotency key clean-up failed; will try again")
