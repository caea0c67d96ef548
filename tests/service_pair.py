"""Both services on a database of their own, with settings of the test's choosing: for tests
that stop the auth service, need short refresh intervals or must not share counts."""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from auth_service.config import AuthSettings
from auth_service.server import start as start_auth
from shared.migrations import SERVICES, migrate
from shared.server import RunningServer
from tests.auth_helpers import TEST_REGISTRATION_LIMITS
from tests.databases import throwaway_database
from wallet_service.config import WalletSettings
from wallet_service.server import start as start_wallet


@dataclass
class ServicePair:
    database_url: str
    auth: RunningServer
    wallet: RunningServer
    auth_channel: grpc.aio.Channel
    wallet_channel: grpc.aio.Channel
    auth_settings: AuthSettings
    wallet_settings: WalletSettings


def auth_settings(database_url: str, **settings: Any) -> AuthSettings:
    return AuthSettings(
        database_url=database_url,
        auth_host="127.0.0.1",
        auth_port=0,
        auto_migrate=False,
        **{"bcrypt_cost": 4, **TEST_REGISTRATION_LIMITS, **settings},
    )


def wallet_settings(database_url: str, auth_port: int, **settings: Any) -> WalletSettings:
    return WalletSettings(
        database_url=database_url,
        wallet_host="127.0.0.1",
        wallet_port=0,
        auto_migrate=False,
        auth_address=f"127.0.0.1:{auth_port}",
        **settings,
    )


@contextlib.asynccontextmanager
async def service_pair(
    database_server_url: str,
    auth: dict[str, Any] | None = None,
    wallet: dict[str, Any] | None = None,
) -> AsyncIterator[ServicePair]:
    """Auth and wallet servers on a new migrated database, with plaintext channels to each."""
    with throwaway_database(database_server_url) as url:
        for service in SERVICES:
            migrate(url, service)
        auth_config = auth_settings(url, **(auth or {}))
        auth_server = await start_auth(auth_config)
        try:
            wallet_config = wallet_settings(url, auth_server.port, **(wallet or {}))
            wallet_server = await start_wallet(wallet_config)
            try:
                async with (
                    grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as auth_channel,
                    grpc.aio.insecure_channel(f"127.0.0.1:{wallet_server.port}") as wallet_channel,
                ):
                    yield ServicePair(
                        url,
                        auth_server,
                        wallet_server,
                        auth_channel,
                        wallet_channel,
                        auth_config,
                        wallet_config,
                    )
            finally:
                await wallet_server.stop(grace=0)
        finally:
            await auth_server.stop(grace=0)  # stopping twice is harmless
