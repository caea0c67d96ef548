"""Fixtures: a throwaway migrated database and real gRPC servers on free ports."""

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from auth_service.config import AuthSettings
from auth_service.server import start as start_auth
from shared.migrations import SERVICES, migrate
from shared.server import RunningServer
from tests.databases import admin_url, throwaway_database
from wallet_service.config import WalletSettings
from wallet_service.server import start as start_wallet


@pytest.fixture(scope="session")
def database_server_url() -> str:
    return admin_url()


@pytest.fixture(scope="session")
def database_url(database_server_url: str) -> Iterator[str]:
    """One migrated database shared by the session's servers."""
    with throwaway_database(database_server_url) as url:
        for service in SERVICES:
            migrate(url, service)
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
