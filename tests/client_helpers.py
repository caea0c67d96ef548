"""The client library's tests: clients of the session's servers, identities, and a wallet
server that can be stopped and started again on the same port."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from auth_service.admin import create_service_account
from shared.gen.auth.v1 import auth_pb2
from shared.server import RunningServer
from tests.auth_helpers import PASSWORD, unique_email
from tests.test_servers import free_port
from wallet_client import WalletClient
from wallet_service.config import WalletSettings
from wallet_service.server import start as start_wallet


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


@dataclass
class RestartableWallet:
    """A wallet server of its own on a fixed port, with a fixed page token secret so that its
    cursors still work after a restart (as on instances that share PAGE_TOKEN_SECRET)."""

    settings: WalletSettings
    server: RunningServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.settings.wallet_port}"

    async def start(self) -> None:
        assert self.server is None
        self.server = await start_wallet(self.settings)

    async def stop(self) -> None:
        """Stops at once: calls in flight are cancelled, as when a process dies."""
        assert self.server is not None
        server, self.server = self.server, None
        await server.stop(grace=0)


@contextlib.asynccontextmanager
async def restartable_wallet(
    wallet_settings: WalletSettings, **settings: Any
) -> AsyncIterator[RestartableWallet]:
    wallet = RestartableWallet(
        wallet_settings.model_copy(
            update={
                "wallet_port": free_port(),
                "page_token_secret": SecretStr(uuid.uuid4().hex * 2),
                **settings,
            }
        )
    )
    await wallet.start()
    try:
        yield wallet
    finally:
        if wallet.server is not None:
            await wallet.stop()
