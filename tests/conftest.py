"""Fixtures: a throwaway migrated database and real gRPC servers on free ports."""

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from auth_service.config import AuthSettings
from auth_service.server import start as start_auth
from shared.server import RunningServer
from tests.auth_helpers import TEST_REGISTRATION_LIMITS
from tests.databases import admin_url, migrated_database, throwaway_database
from tests.wallet_helpers import Caller, new_service, new_user
from wallet_service.config import WalletSettings
from wallet_service.server import start as start_wallet


@pytest.fixture(scope="session")
def database_server_url() -> str:
    return admin_url()


@pytest.fixture(scope="session")
def database_url(database_server_url: str) -> Iterator[str]:
    """One migrated database shared by the session's servers."""
    with migrated_database(database_server_url) as url:
        yield url


@pytest.fixture
def empty_database_url(database_server_url: str) -> Iterator[str]:
    with throwaway_database(database_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def auth_settings(database_url: str) -> AuthSettings:
    return AuthSettings(
        database_url=database_url,
        auth_host="127.0.0.1",
        auth_port=0,
        auto_migrate=False,
        bcrypt_cost=4,  # the lowest bcrypt allows: tests hash a lot of passwords
        **TEST_REGISTRATION_LIMITS,
    )


@pytest.fixture(scope="session")
async def auth_server(auth_settings: AuthSettings) -> AsyncIterator[RunningServer]:
    running = await start_auth(auth_settings)
    yield running
    await running.stop(grace=1)


@pytest.fixture(scope="session")
async def auth_channel(auth_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def wallet_settings(database_url: str, auth_server: RunningServer) -> WalletSettings:
    return WalletSettings(
        database_url=database_url,
        wallet_host="127.0.0.1",
        wallet_port=0,
        auto_migrate=False,
        auth_address=f"127.0.0.1:{auth_server.port}",
        lock_timeout_seconds=1.0,
        # Expired holds stop counting without the sweep: the tests prove it, so it stays away.
        hold_sweep_interval_seconds=3600,
    )


@pytest.fixture(scope="session")
async def wallet_server(wallet_settings: WalletSettings) -> AsyncIterator[RunningServer]:
    running = await start_wallet(wallet_settings)
    yield running
    await running.stop(grace=1)


@pytest.fixture(scope="session")
async def wallet_channel(wallet_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{wallet_server.port}") as channel:
        yield channel


# --- wallet callers (tests/wallet_helpers.py) ----------------------------------------------


@pytest.fixture
async def user(auth_channel: grpc.aio.Channel, wallet_channel: grpc.aio.Channel) -> Caller:
    """A newly registered user, logged in."""
    return await new_user(auth_channel, wallet_channel)


@pytest.fixture
async def other_user(auth_channel: grpc.aio.Channel, wallet_channel: grpc.aio.Channel) -> Caller:
    return await new_user(auth_channel, wallet_channel)


@pytest.fixture(scope="session")
async def payments(
    auth_channel: grpc.aio.Channel, wallet_channel: grpc.aio.Channel, database_url: str
) -> Caller:
    """A service account with the wallet:credit scope (the payments service)."""
    return await new_service(auth_channel, wallet_channel, database_url, ["wallet:credit"])


@pytest.fixture(scope="session")
async def admin(
    auth_channel: grpc.aio.Channel, wallet_channel: grpc.aio.Channel, database_url: str
) -> Caller:
    """A service account with the wallet:admin scope."""
    return await new_service(auth_channel, wallet_channel, database_url, ["wallet:admin"])


@pytest.fixture(scope="session")
async def checkout(
    auth_channel: grpc.aio.Channel, wallet_channel: grpc.aio.Channel, database_url: str
) -> Caller:
    """A service account with the wallet:hold scope (a checkout that authorises payments)."""
    return await new_service(auth_channel, wallet_channel, database_url, ["wallet:hold"])
