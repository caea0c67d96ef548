"""Small helpers for tests that need identities from the auth service."""

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from typing import Any

import grpc

from auth_service.admin import create_service_account
from auth_service.config import AuthSettings
from auth_service.server import start
from shared.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from shared.migrations import migrate
from tests.databases import throwaway_database
from tests.grpc_errors import expect_status

PASSWORD = "correct horse battery staple"
# Every test registers from 127.0.0.1: lift the per-address registration limit for them.
TEST_REGISTRATION_LIMITS = {"register_max_per_address": 1_000_000, "register_max_total": 1_000_000}
DOMAIN = "auth.v1.AuthService"


def auth_stub(auth_channel: grpc.aio.Channel) -> auth_pb2_grpc.AuthServiceStub:
    return auth_pb2_grpc.AuthServiceStub(auth_channel)


def bearer(access_token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {access_token}"),)


async def expect_auth_error(
    code: grpc.StatusCode, reason: str, awaitable: Awaitable[Any]
) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code` and an auth ErrorInfo carrying `reason`."""
    return await expect_status(code, DOMAIN, reason, awaitable)


@contextlib.contextmanager
def auth_database(database_server_url: str) -> Iterator[str]:
    """A throwaway database with the auth schema, for tests that need one to themselves."""
    with throwaway_database(database_server_url) as url:
        migrate(url, "auth")
        yield url


@contextlib.asynccontextmanager
async def extra_auth_server(database_url: str, **settings: Any) -> AsyncIterator[grpc.aio.Channel]:
    """An extra auth server with its own settings; yields a channel to it."""
    running = await start(
        AuthSettings(
            database_url=database_url,
            auth_host="127.0.0.1",
            auth_port=0,
            auto_migrate=False,
            **{"bcrypt_cost": 4, **TEST_REGISTRATION_LIMITS, **settings},
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield channel
    finally:
        await running.stop(grace=0)


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


async def register(
    auth_channel: grpc.aio.Channel, email: str | None = None, password: str = PASSWORD
) -> auth_pb2.User:
    response = await auth_pb2_grpc.AuthServiceStub(auth_channel).Register(
        auth_pb2.RegisterRequest(
            email=email or unique_email(), password=password, display_name="Test User"
        )
    )
    return response.user


async def login(
    auth_channel: grpc.aio.Channel, email: str, password: str = PASSWORD
) -> auth_pb2.LoginResponse:
    return await auth_pb2_grpc.AuthServiceStub(auth_channel).Login(
        auth_pb2.LoginRequest(email=email, password=password)
    )


async def logged_in_user(
    auth_channel: grpc.aio.Channel,
) -> tuple[auth_pb2.User, auth_pb2.TokenPair]:
    """A new user and the tokens of its first session."""
    user = await register(auth_channel)
    return user, (await login(auth_channel, user.email)).tokens


async def get_me(auth_channel: grpc.aio.Channel, access_token: str) -> auth_pb2.User:
    response = await auth_stub(auth_channel).GetMe(
        auth_pb2.GetMeRequest(), metadata=bearer(access_token)
    )
    return response.user


async def register_and_login(auth_channel: grpc.aio.Channel) -> tuple[str, str]:
    """A new user (unique email each call): its id and an access token."""
    user, tokens = await logged_in_user(auth_channel)
    return user.id, tokens.access_token


async def service_token(
    auth_channel: grpc.aio.Channel, database_url: str, scopes: Sequence[str]
) -> str:
    """An access token of a new service account with `scopes`."""
    client_id, secret = await create_service_account(
        database_url, f"test-{uuid.uuid4().hex[:8]}", scopes
    )
    response = await auth_pb2_grpc.AuthServiceStub(auth_channel).IssueServiceToken(
        auth_pb2.IssueServiceTokenRequest(client_id=client_id, client_secret=secret)
    )
    return response.access_token
