"""Revocation that takes effect at the wallet within REVOCATION_REFRESH_SECONDS (issue 8,
findings 7 and 8): disabled service accounts, Logout, Logout everywhere, ChangePassword and
revoked keys; the wallet keeps verifying locally, also while the auth service is down."""

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization

from auth_service.admin import create_service_account, disable_service_account
from shared.errors import error_info
from shared.gen.auth.v1 import auth_pb2
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tests.auth_helpers import (
    PASSWORD,
    auth_stub,
    bearer,
    expect_auth_error,
    logged_in_user,
    login,
)
from tests.service_pair import ServicePair, service_pair
from tests.wallet_helpers import Caller, expect_error

REFRESH_SECONDS = 0.2
FAST_REFRESH = {"revocation_refresh_seconds": REFRESH_SECONDS}
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
async def pair(database_server_url: str) -> AsyncIterator[ServicePair]:
    async with service_pair(database_server_url, auth=FAST_REFRESH, wallet=FAST_REFRESH) as pair:
        yield pair


def wallet_caller(pair: ServicePair, token: str) -> Caller:
    return Caller(wallet_pb2_grpc.WalletServiceStub(pair.wallet_channel), token)


async def list_wallets(pair: ServicePair, token: str) -> Any:
    return await wallet_caller(pair, token).call("ListWallets", wallet_pb2.ListWalletsRequest())


async def refused_in_time(call: Callable[[], Awaitable[Any]], reason: str) -> None:
    """Waits (a bounded while, many refresh intervals) until `call` is refused with
    UNAUTHENTICATED `reason`; fails if it never is."""
    deadline = time.monotonic() + 50 * REFRESH_SECONDS
    while True:
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            info = error_info(error)
            assert (error.code(), info and info.reason) == (UNAUTHENTICATED, reason)
            return
        assert time.monotonic() < deadline, "still accepted"
        await asyncio.sleep(REFRESH_SECONDS / 4)


async def revocations(pair: ServicePair) -> auth_pb2.GetRevocationsResponse:
    return await auth_stub(pair.auth_channel).GetRevocations(auth_pb2.GetRevocationsRequest())


# --- 8: sessions and service accounts ------------------------------------------------------


async def test_a_disabled_service_account_stops_crediting(pair: ServicePair) -> None:
    client_id, secret = await create_service_account(
        pair.database_url, "payments", ["wallet:credit"]
    )
    issued = await auth_stub(pair.auth_channel).IssueServiceToken(
        auth_pb2.IssueServiceTokenRequest(client_id=client_id, client_secret=secret)
    )
    payments = wallet_caller(pair, issued.access_token)
    _, tokens = await logged_in_user(pair.auth_channel)
    owner = wallet_caller(pair, tokens.access_token)
    wallet_id = (await owner.create_wallet()).id
    await payments.credit(wallet_id, 100)

    assert await disable_service_account(pair.database_url, client_id)
    await refused_in_time(lambda: list_wallets(pair, issued.access_token), "TOKEN_REVOKED")
    await expect_error(UNAUTHENTICATED, "TOKEN_REVOKED", payments.credit(wallet_id, 1_000_000))
    assert await owner.balance(wallet_id) == 100
    assert client_id in (await revocations(pair)).subjects


async def test_logout_revokes_that_sessions_access_token_only(pair: ServicePair) -> None:
    user, first = await logged_in_user(pair.auth_channel)
    second = (await login(pair.auth_channel, user.email)).tokens
    await list_wallets(pair, first.access_token)

    await auth_stub(pair.auth_channel).Logout(
        auth_pb2.LogoutRequest(refresh_token=first.refresh_token)
    )
    await refused_in_time(lambda: list_wallets(pair, first.access_token), "TOKEN_REVOKED")
    await refused_in_time(
        lambda: auth_stub(pair.auth_channel).GetMe(
            auth_pb2.GetMeRequest(), metadata=bearer(first.access_token)
        ),
        "TOKEN_REVOKED",
    )
    await list_wallets(pair, second.access_token)  # the user's other session goes on


async def test_logout_everywhere_ends_every_session_of_the_user(pair: ServicePair) -> None:
    user, first = await logged_in_user(pair.auth_channel)
    second = (await login(pair.auth_channel, user.email)).tokens
    _, stranger = await logged_in_user(pair.auth_channel)

    await auth_stub(pair.auth_channel).Logout(
        auth_pb2.LogoutRequest(refresh_token=second.refresh_token, all_sessions=True)
    )
    for tokens in (first, second):
        await refused_in_time(lambda t=tokens: list_wallets(pair, t.access_token), "TOKEN_REVOKED")
        await expect_auth_error(
            UNAUTHENTICATED,
            "REFRESH_TOKEN_REVOKED",
            auth_stub(pair.auth_channel).RefreshToken(
                auth_pb2.RefreshTokenRequest(refresh_token=tokens.refresh_token)
            ),
        )
    await list_wallets(pair, stranger.access_token)
    again = (await login(pair.auth_channel, user.email)).tokens
    await list_wallets(pair, again.access_token)  # a new login is a new session


async def test_change_password_revokes_the_access_tokens_issued_before_it(
    pair: ServicePair,
) -> None:
    user, before = await logged_in_user(pair.auth_channel)
    await auth_stub(pair.auth_channel).ChangePassword(
        auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password="new passphrase"),
        metadata=bearer(before.access_token),
    )
    after = (await login(pair.auth_channel, user.email, "new passphrase")).tokens
    await refused_in_time(lambda: list_wallets(pair, before.access_token), "TOKEN_REVOKED")
    await list_wallets(pair, after.access_token)


async def test_revocations_list_only_what_can_still_have_live_tokens(pair: ServicePair) -> None:
    _, tokens = await logged_in_user(pair.auth_channel)
    await auth_stub(pair.auth_channel).Logout(
        auth_pb2.LogoutRequest(refresh_token=tokens.refresh_token)
    )
    session_id = jwt.decode(tokens.access_token, options={"verify_signature": False})["sid"]
    listed = await revocations(pair)
    assert session_id in listed.session_ids
    assert abs(listed.list_time.ToSeconds() - time.time()) < 60
    # Ended longer ago than the token lifetime (900 s) and its margin: no live token is left.
    with psycopg.connect(pair.database_url) as conn:
        conn.execute(
            "UPDATE auth.sessions SET revoked_at = now() - interval '961 seconds' WHERE id = %s",
            (session_id,),
        )
    assert session_id not in (await revocations(pair)).session_ids


# --- 7: keys -------------------------------------------------------------------------------


def active_private_key(database_url: str) -> tuple[str, Any]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT id, private_key_pem FROM auth.signing_keys WHERE retired_at IS NULL"
        ).fetchone()
    assert row is not None
    return row[0], serialization.load_pem_private_key(row[1].encode(), None)


def token_signed_with(key_id: str, private_key: Any, lifetime_seconds: int) -> str:
    now = int(time.time())
    claims = {
        "iss": "wallet-system-auth",
        "aud": "wallet-system",
        "sub": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_seconds,
        "jti": str(uuid.uuid4()),
        "scope": "",
    }
    return jwt.encode(
        claims, private_key, algorithm="EdDSA", headers={"kid": key_id, "typ": "at+jwt"}
    )


async def test_a_validly_signed_token_living_a_year_is_refused(pair: ServicePair) -> None:
    key_id, private_key = active_private_key(pair.database_url)
    await list_wallets(pair, token_signed_with(key_id, private_key, 900))
    await expect_error(
        UNAUTHENTICATED,
        "INVALID_TOKEN",
        list_wallets(pair, token_signed_with(key_id, private_key, 365 * 86400)),
    )


async def test_revoke_key_unpublishes_it_at_once_and_its_tokens_are_refused(
    pair: ServicePair,
) -> None:
    _, tokens = await logged_in_user(pair.auth_channel)
    key_id, private_key = active_private_key(pair.database_url)
    await list_wallets(pair, tokens.access_token)

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "auth_service.admin",
        "revoke-key",
        f"--key-id={key_id}",  # a key id may start with "-": with a space, argparse refuses it
        env={**os.environ, "DATABASE_URL": pair.database_url},
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stdout
    assert key_id in stdout.decode()

    published = (
        await auth_stub(pair.auth_channel).GetPublicKeys(auth_pb2.GetPublicKeysRequest())
    ).keys
    assert key_id not in {key.key_id for key in published}
    assert [key.active for key in published].count(True) == 1  # a new key signs
    assert key_id in (await revocations(pair)).key_ids
    await refused_in_time(lambda: list_wallets(pair, tokens.access_token), "TOKEN_REVOKED")
    # What a thief would sign with the leaked key from now on is refused too.
    forged = token_signed_with(key_id, private_key, 600)
    await expect_error(UNAUTHENTICATED, "TOKEN_REVOKED", list_wallets(pair, forged))
    # Logins go on with the new key.
    user, _ = await logged_in_user(pair.auth_channel)
    await list_wallets(pair, (await login(pair.auth_channel, user.email)).tokens.access_token)


async def test_revoke_key_takes_a_key_id_that_starts_with_a_dash(pair: ServicePair) -> None:
    """Key ids are base64url thumbprints: one in 64 starts with "-". `--key-id=KID` (as the
    Makefile and README write it) reaches the command; the answer is about the key itself."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "auth_service.admin",
        "revoke-key",
        "--key-id=-no-such-key",
        env={**os.environ, "DATABASE_URL": pair.database_url},
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1, stderr
    assert b"no unrevoked key -no-such-key" in stderr


# --- the wallet keeps working while the auth service is down -------------------------------


async def test_an_auth_outage_keeps_the_last_revocations_in_force(
    database_server_url: str,
) -> None:
    async with service_pair(database_server_url, auth=FAST_REFRESH, wallet=FAST_REFRESH) as pair:
        _, kept = await logged_in_user(pair.auth_channel)
        _, ended = await logged_in_user(pair.auth_channel)
        caller = wallet_caller(pair, kept.access_token)
        wallet_id = (await caller.create_wallet()).id
        await auth_stub(pair.auth_channel).Logout(
            auth_pb2.LogoutRequest(refresh_token=ended.refresh_token)
        )
        await refused_in_time(lambda: list_wallets(pair, ended.access_token), "TOKEN_REVOKED")

        await pair.auth.stop(grace=0)
        await asyncio.sleep(5 * REFRESH_SECONDS)  # several refreshes fail meanwhile
        answer = await caller.call("GetWallet", wallet_pb2.GetWalletRequest(wallet_id=wallet_id))
        assert answer.wallet.id == wallet_id
        await expect_error(UNAUTHENTICATED, "TOKEN_REVOKED", list_wallets(pair, ended.access_token))
