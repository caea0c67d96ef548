"""The client library's tests: clients of the session's servers, identities, and a wallet
service process that can be killed and started again on the same port."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from auth_service.admin import create_service_account
from shared.gen.auth.v1 import auth_pb2
from shared.server import RunningServer
from tests.auth_helpers import PASSWORD, unique_email
from tests.processes import ServiceProcess, wallet_process
from wallet_client import WalletClient


async def wait_until(condition: Callable[[], object], what: str, seconds: float = 10) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    while not condition():
        assert loop.time() < give_up, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


def address(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


@contextlib.asynccontextmanager
async def client_of(
    wallet_server: RunningServer | str, auth_server: RunningServer | str, **options: Any
) -> AsyncIterator[WalletClient]:
    """A WalletClient of these servers (or addresses), closed afterwards."""
    wallet = wallet_server if isinstance(wallet_server, str) else address(wallet_server)
    auth = auth_server if isinstance(auth_server, str) else address(auth_server)
    async with WalletClient(wallet, auth, **options) as client:
        yield client


@contextlib.asynccontextmanager
async def user_client(
    wallet_server: RunningServer | str, auth_server: RunningServer | str
) -> AsyncIterator[WalletClient]:
    """A client logged in as a new user."""
    async with client_of(wallet_server, auth_server) as client:
        await log_in_new_user(client)
        yield client


@contextlib.asynccontextmanager
async def service_client(
    wallet_server: RunningServer | str,
    auth_server: RunningServer | str,
    database_url: str,
    scopes: list[str],
) -> AsyncIterator[WalletClient]:
    """A client logged in as a new service account with `scopes`."""
    async with client_of(wallet_server, auth_server) as client:
        await client.login_service(*await new_service_account(database_url, scopes))
        yield client


async def log_in_new_user(client: WalletClient) -> auth_pb2.LoginResponse:
    """Registers a user with a unique email and logs the client in as that user."""
    email = unique_email("client")
    await client.register(email, PASSWORD, "Client Test")
    return await client.login(email, PASSWORD)


async def new_service_account(database_url: str, scopes: list[str]) -> tuple[str, str]:
    """A service account's client id and secret."""
    return await create_service_account(database_url, f"client-{uuid.uuid4().hex[:8]}", scopes)


@contextlib.asynccontextmanager
async def wallet_process_of(
    database_url: str, auth_server: RunningServer, log_dir: Path, **settings: str
) -> AsyncIterator[ServiceProcess]:
    """A wallet service process of its own (one worker) on the session's database and auth
    server, to kill and start again on the same port. A fixed PAGE_TOKEN_SECRET keeps its
    cursors valid across restarts, as on instances that share one."""
    process = wallet_process(
        database_url,
        log_dir,
        address(auth_server),
        "client-wallet",
        WALLET_WORKERS="1",
        PAGE_TOKEN_SECRET=uuid.uuid4().hex * 2,
        SHUTDOWN_DRAIN_SECONDS="0",
        **settings,
    )
    process.start()
    try:
        await process.wait_serving()
        yield process
    finally:
        await process.stop()
