"""A password change racing a login with the old password: the change always wins.
And text PostgreSQL cannot store (NUL bytes) is refused precisely, never INTERNAL."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from auth_service.passwords import PasswordHasher
from auth_service.sessions import Sessions
from shared.gen.auth.v1 import auth_pb2
from tests.auth_helpers import (
    PASSWORD,
    auth_stub,
    bearer,
    expect_auth_error,
    extra_auth_server,
    login,
    register,
)

NEW_PASSWORD = "a brand new passphrase"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


class Gate:
    """Pauses the first call of a patched coroutine method until `open()`."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self._opened = asyncio.Event()
        self._used = False

    def wrap(self, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def paused(*args: Any, **kwargs: Any) -> Any:
            if not self._used:
                self._used = True
                self.reached.set()
                await self._opened.wait()
            return await method(*args, **kwargs)

        return paused

    def open(self) -> None:
        self._opened.set()


async def change_password(auth_channel: grpc.aio.Channel, access_token: str) -> None:
    await auth_stub(auth_channel).ChangePassword(
        auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=NEW_PASSWORD),
        metadata=bearer(access_token),
    )


async def test_a_login_that_upgrades_the_hash_cannot_undo_a_password_change(
    auth_channel: grpc.aio.Channel, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await register(auth_channel)  # hashed at cost 4
    tokens = (await login(auth_channel, user.email)).tokens
    async with extra_auth_server(database_url, bcrypt_cost=5) as upgrading:
        gate = Gate()
        monkeypatch.setattr(PasswordHasher, "hash", gate.wrap(PasswordHasher.hash))
        # A login with the old password checks it, then re-hashes it at cost 5 ...
        racing = asyncio.create_task(login(upgrading, user.email))
        await gate.reached.wait()
        # ... while the password is changed ...
        await change_password(auth_channel, tokens.access_token)
        gate.open()
        # ... so the stale login fails and does not write the old password back.
        await expect_auth_error(UNAUTHENTICATED, "INVALID_CREDENTIALS", racing)
    await login(auth_channel, user.email, NEW_PASSWORD)
    await expect_auth_error(UNAUTHENTICATED, "INVALID_CREDENTIALS", login(auth_channel, user.email))


async def test_a_login_checked_before_a_password_change_gets_no_session_after_it(
    auth_channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await register(auth_channel)
    tokens = (await login(auth_channel, user.email)).tokens
    gate = Gate()
    monkeypatch.setattr(Sessions, "start", gate.wrap(Sessions.start))
    # The old password is checked; the session is about to be created ...
    racing = asyncio.create_task(login(auth_channel, user.email))
    await gate.reached.wait()
    # ... when the password change revokes every session ...
    await change_password(auth_channel, tokens.access_token)
    gate.open()
    # ... so that login must not leave a session behind that outlives the change.
    await expect_auth_error(UNAUTHENTICATED, "INVALID_CREDENTIALS", racing)


async def test_control_characters_in_an_email_are_refused_at_registration(
    auth_channel: grpc.aio.Channel,
) -> None:
    for email in ("a\x00b@example.com", "a\x01b@example.com", "a\x7fb@example.com"):
        await expect_auth_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_EMAIL",
            register(auth_channel, email=email),
        )


async def test_nul_bytes_get_the_documented_answer_before_reaching_the_database(
    auth_channel: grpc.aio.Channel,
) -> None:
    """Finding 9: they used to answer an undocumented INVALID_VALUE with the driver's text."""
    stub = auth_stub(auth_channel)
    error = await expect_auth_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_EMAIL",
        stub.Login(auth_pb2.LoginRequest(email="a\x00b@example.com", password=PASSWORD)),
    )
    assert "0x00" not in (error.details() or "")
    for client_id, secret in (("svc_\x00", "x"), ("svc_" + "0" * 24, "secret\x00")):
        await expect_auth_error(
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CLIENT",
            stub.IssueServiceToken(
                auth_pb2.IssueServiceTokenRequest(client_id=client_id, client_secret=secret)
            ),
        )
