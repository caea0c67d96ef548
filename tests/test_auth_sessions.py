"""Refresh tokens: rotation, reuse detection, expiry, Logout and ChangePassword revocation."""

import asyncio
import hashlib

import grpc
import psycopg

from shared.errors import error_info
from shared.gen.auth.v1 import auth_pb2
from tests.auth_helpers import (
    PASSWORD,
    auth_stub,
    bearer,
    expect_auth_error,
    get_me,
    logged_in_user,
    login,
    register,
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


async def new_session(auth_channel: grpc.aio.Channel) -> auth_pb2.TokenPair:
    _, tokens = await logged_in_user(auth_channel)
    return tokens


async def refresh(auth_channel: grpc.aio.Channel, refresh_token: str) -> auth_pb2.TokenPair:
    response = await auth_stub(auth_channel).RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=refresh_token)
    )
    return response.tokens


async def logout(auth_channel: grpc.aio.Channel, refresh_token: str) -> None:
    await auth_stub(auth_channel).Logout(auth_pb2.LogoutRequest(refresh_token=refresh_token))


async def test_refresh_returns_a_new_pair_for_the_same_user(auth_channel: grpc.aio.Channel) -> None:
    user = await register(auth_channel)
    first = (await login(auth_channel, user.email)).tokens
    second = await refresh(auth_channel, first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    assert second.token_type == "Bearer"
    # The session's end is fixed at login: rotation does not extend it.
    assert second.refresh_token_expire_time == first.refresh_token_expire_time
    assert (await get_me(auth_channel, second.access_token)).id == user.id


async def test_each_successor_refreshes_in_turn(auth_channel: grpc.aio.Channel) -> None:
    tokens = await new_session(auth_channel)
    seen = {tokens.refresh_token}
    for _ in range(3):
        tokens = await refresh(auth_channel, tokens.refresh_token)
        seen.add(tokens.refresh_token)
    assert len(seen) == 4


async def test_a_spent_refresh_token_is_reuse_and_revokes_the_whole_session(
    auth_channel: grpc.aio.Channel,
) -> None:
    first = await new_session(auth_channel)
    second = await refresh(auth_channel, first.refresh_token)
    await expect_auth_error(
        UNAUTHENTICATED, "REFRESH_TOKEN_REUSED", refresh(auth_channel, first.refresh_token)
    )
    # The successor that the thief or the user holds is dead too.
    await expect_auth_error(
        UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED", refresh(auth_channel, second.refresh_token)
    )


async def test_reuse_revokes_only_that_session(auth_channel: grpc.aio.Channel) -> None:
    user = await register(auth_channel)
    laptop = (await login(auth_channel, user.email)).tokens
    phone = (await login(auth_channel, user.email)).tokens
    await refresh(auth_channel, laptop.refresh_token)
    await expect_auth_error(
        UNAUTHENTICATED, "REFRESH_TOKEN_REUSED", refresh(auth_channel, laptop.refresh_token)
    )
    await refresh(auth_channel, phone.refresh_token)


async def test_two_concurrent_refreshes_with_one_token_let_exactly_one_win(
    auth_channel: grpc.aio.Channel,
) -> None:
    tokens = await new_session(auth_channel)
    results = await asyncio.gather(
        *(refresh(auth_channel, tokens.refresh_token) for _ in range(8)), return_exceptions=True
    )
    winners = [result for result in results if isinstance(result, auth_pb2.TokenPair)]
    losers = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 7
    assert {error.code() for error in losers} == {UNAUTHENTICATED}
    reasons = {error_info(error).reason for error in losers}  # type: ignore[union-attr]
    assert "REFRESH_TOKEN_REUSED" in reasons
    assert reasons <= {"REFRESH_TOKEN_REUSED", "REFRESH_TOKEN_REVOKED"}
    # A second use of a token is reuse even when it races: the session ends for both.
    await expect_auth_error(
        UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED", refresh(auth_channel, winners[0].refresh_token)
    )


async def test_an_unknown_refresh_token_is_invalid(auth_channel: grpc.aio.Channel) -> None:
    for token in ("", "made-up-token"):
        await expect_auth_error(
            UNAUTHENTICATED, "REFRESH_TOKEN_INVALID", refresh(auth_channel, token)
        )


async def test_an_expired_session_cannot_be_refreshed(
    auth_channel: grpc.aio.Channel, database_url: str
) -> None:
    tokens = await new_session(auth_channel)
    token_hash = hashlib.sha256(tokens.refresh_token.encode()).digest()
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE auth.sessions SET expires_at = now() - interval '1 second'"
            " WHERE id = (SELECT session_id FROM auth.refresh_tokens WHERE token_hash = %s)",
            (token_hash,),
        )
    await expect_auth_error(
        UNAUTHENTICATED, "REFRESH_TOKEN_EXPIRED", refresh(auth_channel, tokens.refresh_token)
    )


async def test_refresh_tokens_are_stored_only_as_sha256_hashes(
    auth_channel: grpc.aio.Channel, database_url: str
) -> None:
    tokens = await new_session(auth_channel)
    with psycopg.connect(database_url) as conn:
        by_hash = conn.execute(
            "SELECT count(*) FROM auth.refresh_tokens WHERE token_hash = %s",
            (hashlib.sha256(tokens.refresh_token.encode()).digest(),),
        ).fetchone()
        # No column of any session or token row holds the token itself.
        in_clear = conn.execute(
            "SELECT count(*) FROM auth.refresh_tokens t JOIN auth.sessions s"
            " ON s.id = t.session_id WHERE row_to_json(t)::text || row_to_json(s)::text LIKE %s",
            (f"%{tokens.refresh_token}%",),
        ).fetchone()
    assert by_hash == (1,)
    assert in_clear == (0,)


async def test_logout_revokes_the_session(auth_channel: grpc.aio.Channel) -> None:
    first = await new_session(auth_channel)
    second = await refresh(auth_channel, first.refresh_token)
    await logout(auth_channel, first.refresh_token)  # any token of the session will do
    await expect_auth_error(
        UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED", refresh(auth_channel, second.refresh_token)
    )


async def test_logout_of_an_unknown_or_ended_session_succeeds(
    auth_channel: grpc.aio.Channel,
) -> None:
    tokens = await new_session(auth_channel)
    await logout(auth_channel, tokens.refresh_token)
    await logout(auth_channel, tokens.refresh_token)
    await logout(auth_channel, "made-up-token")
    await logout(auth_channel, "")


async def test_logout_leaves_the_users_other_sessions_alone(
    auth_channel: grpc.aio.Channel,
) -> None:
    user = await register(auth_channel)
    laptop = (await login(auth_channel, user.email)).tokens
    phone = (await login(auth_channel, user.email)).tokens
    await logout(auth_channel, laptop.refresh_token)
    await refresh(auth_channel, phone.refresh_token)


async def test_change_password_revokes_every_session_of_the_user(
    auth_channel: grpc.aio.Channel,
) -> None:
    user = await register(auth_channel)
    laptop = (await login(auth_channel, user.email)).tokens
    phone = (await login(auth_channel, user.email)).tokens
    phone = await refresh(auth_channel, phone.refresh_token)
    bystander = await new_session(auth_channel)
    await auth_stub(auth_channel).ChangePassword(
        auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password="brand new secret"),
        metadata=bearer(laptop.access_token),
    )
    for tokens in (laptop, phone):
        await expect_auth_error(
            UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED", refresh(auth_channel, tokens.refresh_token)
        )
    await refresh(auth_channel, bystander.refresh_token)
    # A new login with the new password starts a working session.
    fresh = (await login(auth_channel, user.email, "brand new secret")).tokens
    await refresh(auth_channel, fresh.refresh_token)
