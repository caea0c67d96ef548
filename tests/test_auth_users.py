"""Register, Login, GetMe and ChangePassword against a real server and PostgreSQL."""

import asyncio
import base64
import hashlib
import time
from typing import Any

import bcrypt
import grpc
import psycopg
import pytest

from auth_service import passwords
from shared.gen.auth.v1 import auth_pb2
from tests.auth_helpers import (
    PASSWORD,
    auth_database,
    auth_stub,
    bearer,
    expect_auth_error,
    extra_auth_server,
    get_me,
    logged_in_user,
    login,
    register,
    service_token,
    unique_email,
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


def stored(database_url: str, query: str, *params: Any) -> Any:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def password_hash_of(database_url: str, email: str) -> str:
    return str(stored(database_url, "SELECT password_hash FROM auth.users WHERE email = %s", email))


# --- Register ------------------------------------------------------------------------------


async def test_register_returns_the_user_with_a_normalised_email(
    auth_channel: grpc.aio.Channel,
) -> None:
    email = unique_email()
    response = await auth_stub(auth_channel).Register(
        auth_pb2.RegisterRequest(
            email=f"  {email.upper()} ", password=PASSWORD, display_name="  Ada Lovelace "
        )
    )
    user = response.user
    assert user.email == email
    assert user.display_name == "Ada Lovelace"
    assert len(user.id) == 36
    assert abs(user.create_time.ToSeconds() - time.time()) < 60


async def test_register_refuses_an_email_taken_in_another_case(
    auth_channel: grpc.aio.Channel,
) -> None:
    email = unique_email()
    await register(auth_channel, email)
    await expect_auth_error(
        grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN", register(auth_channel, email.upper())
    )


async def test_two_concurrent_registrations_of_one_email_create_one_user(
    auth_channel: grpc.aio.Channel, database_url: str
) -> None:
    email = unique_email()
    results = await asyncio.gather(
        *(register(auth_channel, email) for _ in range(5)), return_exceptions=True
    )
    assert sum(isinstance(result, auth_pb2.User) for result in results) == 1
    refused = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert {error.code() for error in refused} == {grpc.StatusCode.ALREADY_EXISTS}
    assert stored(database_url, "SELECT count(*) FROM auth.users WHERE email = %s", email) == 1


@pytest.mark.parametrize(
    "email",
    [
        "",
        "   ",
        "no-at-sign.example.com",
        "two@@example.com",
        "a@b",
        "a b@example.com",
        "user@-example.com",
        "user@example",
        f"{'x' * 65}@example.com",
        "user@exa_mple.com",
    ],
)
async def test_register_refuses_an_invalid_email(
    auth_channel: grpc.aio.Channel, email: str
) -> None:
    request = auth_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="Someone")
    await expect_auth_error(
        INVALID_ARGUMENT, "INVALID_EMAIL", auth_stub(auth_channel).Register(request)
    )


@pytest.mark.parametrize("password", ["", "short", "7 chars", "x" * 1025])
async def test_register_refuses_a_password_too_short_or_too_long(
    auth_channel: grpc.aio.Channel, password: str
) -> None:
    await expect_auth_error(
        INVALID_ARGUMENT, "WEAK_PASSWORD", register(auth_channel, password=password)
    )


@pytest.mark.parametrize("display_name", ["", "   ", "x" * 101, "line\nbreak", "bell\a"])
async def test_register_refuses_an_invalid_display_name(
    auth_channel: grpc.aio.Channel, display_name: str
) -> None:
    request = auth_pb2.RegisterRequest(
        email=unique_email(), password=PASSWORD, display_name=display_name
    )
    await expect_auth_error(
        INVALID_ARGUMENT, "INVALID_DISPLAY_NAME", auth_stub(auth_channel).Register(request)
    )


# --- passwords: length, truncation, cost ---------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "8 chars!",
        "p" * 64,
        "é" * 36 + "x",  # 73 bytes in UTF-8: past bcrypt's 72-byte limit
        "long passphrase " * 12 + "12345678",  # 200 characters
        "🔑" * 1024,  # the longest accepted: 1024 characters, 4096 bytes
    ],
)
async def test_passwords_from_8_to_1024_characters_work(
    auth_channel: grpc.aio.Channel, password: str
) -> None:
    user = await register(auth_channel, password=password)
    response = await login(auth_channel, user.email, password)
    assert response.user.id == user.id


@pytest.mark.parametrize("length", [73, 200])
async def test_a_long_password_is_not_truncated(
    auth_channel: grpc.aio.Channel, length: int
) -> None:
    password = "a" * (length - 1) + "1"
    user = await register(auth_channel, password=password)
    for wrong in (password[:72], password[:-1] + "2"):
        await expect_auth_error(
            UNAUTHENTICATED, "INVALID_CREDENTIALS", login(auth_channel, user.email, wrong)
        )


async def test_the_configured_bcrypt_cost_is_used_and_old_hashes_are_upgraded_at_login(
    database_server_url: str,
) -> None:
    with auth_database(database_server_url) as url:
        async with extra_auth_server(url, bcrypt_cost=4) as channel:
            user = await register(channel)
        assert password_hash_of(url, user.email).startswith("$2b$04$")
        async with extra_auth_server(url, bcrypt_cost=6) as channel:
            await login(channel, user.email)
            assert password_hash_of(url, user.email).startswith("$2b$06$")
            new_user = await register(channel)
            assert password_hash_of(url, new_user.email).startswith("$2b$06$")
            await login(channel, user.email)  # the upgraded hash still matches


async def test_the_password_is_stored_only_as_a_bcrypt_hash(
    auth_channel: grpc.aio.Channel, database_url: str
) -> None:
    user = await register(auth_channel)
    stored_hash = password_hash_of(database_url, user.email)
    assert stored_hash.startswith("$2b$")
    # bcrypt of the SHA-256 pre-hash of the password, as documented: nothing else.
    prehashed = base64.b64encode(hashlib.sha256(PASSWORD.encode()).digest())
    assert bcrypt.checkpw(prehashed, stored_hash.encode())


# --- Login ---------------------------------------------------------------------------------


async def test_login_returns_a_token_pair_and_the_user(auth_channel: grpc.aio.Channel) -> None:
    user = await register(auth_channel)
    response = await login(auth_channel, f" {user.email.upper()}")
    assert response.user == user
    tokens = response.tokens
    assert tokens.token_type == "Bearer"
    assert tokens.access_token.count(".") == 2
    assert len(tokens.refresh_token) >= 43  # 256 bits, base64url
    now = time.time()
    assert tokens.access_token_expire_time.ToSeconds() == pytest.approx(now + 900, abs=60)
    assert tokens.refresh_token_expire_time.ToSeconds() == pytest.approx(now + 30 * 86400, abs=60)


async def test_wrong_password_and_unknown_email_get_the_same_answer(
    auth_channel: grpc.aio.Channel,
) -> None:
    user = await register(auth_channel)
    wrong_password = await expect_auth_error(
        UNAUTHENTICATED, "INVALID_CREDENTIALS", login(auth_channel, user.email, "wrong password")
    )
    unknown_email = await expect_auth_error(
        UNAUTHENTICATED, "INVALID_CREDENTIALS", login(auth_channel, unique_email(), PASSWORD)
    )
    assert wrong_password.details() == unknown_email.details()


async def test_login_for_an_unknown_email_still_checks_a_bcrypt_hash(
    auth_channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked_hashes: list[bytes] = []
    real_checkpw = passwords.bcrypt.checkpw

    def spying_checkpw(password: bytes, hashed: bytes) -> bool:
        checked_hashes.append(hashed)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(passwords.bcrypt, "checkpw", spying_checkpw)
    await expect_auth_error(
        UNAUTHENTICATED, "INVALID_CREDENTIALS", login(auth_channel, unique_email(), PASSWORD)
    )
    assert len(checked_hashes) == 1
    assert checked_hashes[0].startswith(b"$2b$04$")  # the configured cost, like a real one


async def test_a_wrong_password_for_a_cheaper_hash_also_takes_a_check_at_the_configured_cost(
    auth_channel: grpc.aio.Channel, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 8, finding 6: after BCRYPT_COST is raised, a wrong password for an old cost-4
    hash answered in milliseconds, against a full-cost check for an unknown email."""
    user = await register(auth_channel)  # hashed at cost 4
    checked: list[bytes] = []
    real_checkpw = passwords.bcrypt.checkpw

    def spying_checkpw(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed[:7])
        return real_checkpw(password, hashed)

    async with extra_auth_server(database_url, bcrypt_cost=6) as channel:
        monkeypatch.setattr(passwords.bcrypt, "checkpw", spying_checkpw)
        await expect_auth_error(
            UNAUTHENTICATED, "INVALID_CREDENTIALS", login(channel, user.email, "wrong password")
        )
        assert checked == [b"$2b$04$", b"$2b$06$"]
        checked.clear()
        await expect_auth_error(
            UNAUTHENTICATED, "INVALID_CREDENTIALS", login(channel, unique_email(), PASSWORD)
        )
        assert checked == [b"$2b$06$"]  # what an unknown email costs


async def test_unknown_email_and_wrong_password_take_about_as_long(
    database_server_url: str,
) -> None:
    async def fastest(attempt: Any) -> float:
        durations = []
        for _ in range(3):
            started = time.perf_counter()
            with pytest.raises(grpc.aio.AioRpcError):
                await attempt()
            durations.append(time.perf_counter() - started)
        return min(durations)

    # Cost 10 (~60 ms a check) so that skipping bcrypt would stand out clearly.
    with auth_database(database_server_url) as url:
        async with extra_auth_server(url, bcrypt_cost=10) as channel:
            user = await register(channel)
            known = await fastest(lambda: login(channel, user.email, "wrong password"))
            unknown = await fastest(lambda: login(channel, unique_email(), "wrong password"))
    assert 0.5 < unknown / known < 2, (known, unknown)


# --- GetMe ---------------------------------------------------------------------------------


async def test_get_me_returns_the_caller(auth_channel: grpc.aio.Channel) -> None:
    user, tokens = await logged_in_user(auth_channel)
    assert await get_me(auth_channel, tokens.access_token) == user


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "MISSING_TOKEN"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "MISSING_TOKEN"),
        ((("authorization", "Bearer "),), "MISSING_TOKEN"),
        ((("authorization", "Bearer not-a-jwt"),), "INVALID_TOKEN"),
        ((("authorization", "Bearer a.b.c"),), "INVALID_TOKEN"),
    ],
)
async def test_get_me_without_a_valid_access_token_is_unauthenticated(
    auth_channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    await expect_auth_error(
        UNAUTHENTICATED,
        reason,
        auth_stub(auth_channel).GetMe(auth_pb2.GetMeRequest(), metadata=metadata),
    )


async def test_get_me_with_a_refresh_token_is_unauthenticated(
    auth_channel: grpc.aio.Channel,
) -> None:
    _, tokens = await logged_in_user(auth_channel)
    await expect_auth_error(
        UNAUTHENTICATED, "INVALID_TOKEN", get_me(auth_channel, tokens.refresh_token)
    )


async def test_get_me_with_a_service_token_is_permission_denied(
    auth_channel: grpc.aio.Channel, database_url: str
) -> None:
    token = await service_token(auth_channel, database_url, ["wallet:credit"])
    await expect_auth_error(
        grpc.StatusCode.PERMISSION_DENIED,
        "USER_TOKEN_REQUIRED",
        get_me(auth_channel, token),
    )


# --- ChangePassword ------------------------------------------------------------------------


async def change_password(
    auth_channel: grpc.aio.Channel, access_token: str, current: str, new: str
) -> auth_pb2.ChangePasswordResponse:
    return await auth_stub(auth_channel).ChangePassword(
        auth_pb2.ChangePasswordRequest(current_password=current, new_password=new),
        metadata=bearer(access_token),
    )


async def test_change_password_replaces_the_password(auth_channel: grpc.aio.Channel) -> None:
    user, tokens = await logged_in_user(auth_channel)
    await change_password(auth_channel, tokens.access_token, PASSWORD, "a new passphrase")
    await expect_auth_error(
        UNAUTHENTICATED, "INVALID_CREDENTIALS", login(auth_channel, user.email, PASSWORD)
    )
    assert (await login(auth_channel, user.email, "a new passphrase")).user.id == user.id


async def test_change_password_with_a_wrong_current_password_changes_nothing(
    auth_channel: grpc.aio.Channel,
) -> None:
    user, tokens = await logged_in_user(auth_channel)
    await expect_auth_error(
        UNAUTHENTICATED,
        "INVALID_CREDENTIALS",
        change_password(auth_channel, tokens.access_token, "not my password", "a new passphrase"),
    )
    await login(auth_channel, user.email, PASSWORD)


async def test_change_password_refuses_a_weak_new_password(
    auth_channel: grpc.aio.Channel,
) -> None:
    _, tokens = await logged_in_user(auth_channel)
    await expect_auth_error(
        INVALID_ARGUMENT,
        "WEAK_PASSWORD",
        change_password(auth_channel, tokens.access_token, PASSWORD, "short"),
    )


async def test_change_password_needs_an_access_token(auth_channel: grpc.aio.Channel) -> None:
    await expect_auth_error(
        UNAUTHENTICATED,
        "MISSING_TOKEN",
        auth_stub(auth_channel).ChangePassword(
            auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password="new password")
        ),
    )
