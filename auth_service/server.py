"""Start-up of the auth service: pool, signing key, servicer, gRPC server."""

import asyncio
import contextlib
import logging

from auth_service import keys
from auth_service.config import SERVICE_NAME, AuthSettings
from auth_service.keys import KeyStore
from auth_service.passwords import PasswordHasher
from auth_service.revocations import RevocationList
from auth_service.servicer import TOKEN_METHODS, AuthServicer
from auth_service.sessions import Sessions
from auth_service.throttle import (
    LoginThrottle,
    RegistrationThrottle,
    delete_ended_windows_periodically,
)
from auth_service.tokens import AccessTokenIssuer
from shared.authentication import AuthenticationInterceptor
from shared.db import open_pool
from shared.gen.auth.v1 import auth_pb2_grpc
from shared.listener import Listener
from shared.server import RunningServer, start_server
from shared.tokens import TokenVerifier
from shared.transport import server_transport
from shared.workers import ALONE, Worker

log = logging.getLogger(__name__)
# ASVS V2.2.1: no more than 100 failed attempts an hour on one account.
ASVS_MAX_FAILURES_PER_HOUR = 100


async def start(settings: AuthSettings, worker: Worker = ALONE) -> RunningServer:
    pool = await open_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        name="auth",
        statement_timeout_seconds=settings.statement_timeout_seconds,
    )
    async with pool.connection() as conn:
        await keys.create_first_key(conn)
    _warn_about_a_lax_throttle(settings)
    key_store = KeyStore(pool, settings.access_token_ttl_seconds)
    key_changes = Listener(settings.database_url, keys.KEYS_CHANNEL, key_store.forget_published)
    key_changes.start()
    revocations = RevocationList(pool, settings.access_token_ttl_seconds)
    passwords = await asyncio.to_thread(
        PasswordHasher,
        settings.bcrypt_cost,
        workers=settings.password_hash_workers,
        queue_size=settings.password_hash_queue_size,
    )
    servicer = AuthServicer(
        pool=pool,
        passwords=passwords,
        keys=key_store,
        access_tokens=AccessTokenIssuer(
            key_store,
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            ttl_seconds=settings.access_token_ttl_seconds,
        ),
        sessions=Sessions(pool, settings.refresh_token_ttl_seconds),
        throttle=LoginThrottle(
            pool,
            window_seconds=settings.login_throttle_window_seconds,
            max_failures_per_account=settings.login_max_failures_per_account,
            max_failures_per_address=settings.login_max_failures_per_address,
            max_failures_per_trusted_address=settings.login_max_failures_per_trusted_address,
            trusted_address_days=settings.login_trusted_address_days,
        ),
        registrations=RegistrationThrottle(
            pool,
            window_seconds=settings.register_throttle_window_seconds,
            max_per_address=settings.register_max_per_address,
            max_total=settings.register_max_total,
        ),
        revocations=revocations,
        token_issuer=settings.token_issuer,
    )
    # The auth service checks its own tokens (GetMe, ChangePassword) like any other service,
    # with its keys and revocations read from its own database.
    verifier = TokenVerifier(
        key_store.public_keys,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        revocation_source=revocations.current,
        refresh_interval_seconds=settings.revocation_refresh_seconds,
        max_token_lifetime_seconds=settings.access_token_ttl_seconds,
    )
    verifier.start()
    background = []
    if worker.runs_background_jobs:
        background.append(
            asyncio.create_task(
                delete_ended_windows_periodically(
                    pool,
                    max(
                        settings.login_throttle_window_seconds,
                        settings.register_throttle_window_seconds,
                    ),
                    settings.login_trusted_address_days,
                )
            )
        )

    async def stop_background_work() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await key_changes.stop()
        await verifier.close()
        passwords.close()

    return await start_server(
        service_name=SERVICE_NAME,
        add_servicer=lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(
            servicer, server
        ),
        address=settings.address,
        pool=pool,
        interceptors=[
            AuthenticationInterceptor(
                verifier, SERVICE_NAME, lambda method: method in TOKEN_METHODS
            )
        ],
        health_check_interval=settings.health_check_interval_seconds,
        on_stop=[stop_background_work],
        transport=server_transport(settings),
        reuse_port=worker.shares_port,
    )


def _warn_about_a_lax_throttle(settings: AuthSettings) -> None:
    # Past the account limit, the owner's trusted addresses still have a budget of their own.
    failures_per_window = (
        settings.login_max_failures_per_account + settings.login_max_failures_per_trusted_address
    )
    per_hour = failures_per_window * 3600 / settings.login_throttle_window_seconds
    if per_hour > ASVS_MAX_FAILURES_PER_HOUR:
        log.warning(
            "login throttling allows more than 100 failed attempts an hour per account",
            extra={"failures_per_hour": round(per_hour)},
        )
