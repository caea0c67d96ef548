"""Small helpers for tests that need identities from the auth service."""

import uuid
from collections.abc import Sequence

import grpc

from auth_service.admin import create_service_account
from shared.gen.auth.v1 import auth_pb2, auth_pb2_grpc

PASSWORD = "correct horse battery staple"


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


async def register_and_login(auth_channel: grpc.aio.Channel) -> tuple[str, str]:
    """A new user (unique email each call): its id and an access token."""
    user = await register(auth_channel)
    response = await login(auth_channel, user.email)
    return user.id, response.tokens.access_token


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
