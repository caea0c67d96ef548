"""The client library's identities against the real servers: users and service accounts, token
refresh before expiry and after TOKEN_EXPIRED, one refresh at a time, logout and password
changes."""

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization

from auth_service.config import AuthSettings
from auth_service.server import start as start_auth
from shared.gen.auth.v1 import auth_pb2
from shared.server import RunningServer
from tests.auth_helpers import PASSWORD, unique_email
from tests.client_helpers import client_of, log_in_new_user, new_service_account, wait_until
from wallet_client import WalletClient, errors

AUTH_DOMAIN = "auth.v1.AuthService"


@pytest.fixture
async def client(
    wallet_server: RunningServer, auth_server: RunningServer
) -> AsyncIterator[WalletClient]:
    async with client_of(wallet_server, auth_server) as client:
        yield client


@pytest.fixture
async def short_lived_tokens(auth_settings: AuthSettings) -> AsyncIterator[RunningServer]:
    """An auth server on the session's database (its keys, so the session's wallet server
    accepts its tokens) whose access tokens live 2 seconds. The setting's floor is 60 s, far
    too long to wait for in a test, hence model_copy, which does not validate."""
    running = await start_auth(auth_settings.model_copy(update={"access_token_ttl_seconds": 2}))
    yield running
    await running.stop(grace=0)


def claims_of(token: str) -> dict[str, object]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def refresh_tokens_of_session(database_url: str, session_id: object) -> tuple[int, bool]:
    """How many refresh tokens the session has had, and whether it was revoked."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(t.*), s.revoked_at IS NOT NULL FROM auth.sessions s"
            " JOIN auth.refresh_tokens t ON t.session_id = s.id WHERE s.id = %s GROUP BY s.id",
            (session_id,),
        ).fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


async def test_a_user_registers_logs_in_and_reads_itself(client: WalletClient) -> None:
    with pytest.raises(errors.NotLoggedIn):
        await client.get_me()  # refused by the client: nothing to send
    email = unique_email("client")
    registered = await client.register(email, PASSWORD, "Ada")
    with pytest.raises(errors.EmailTaken) as taken:
        await client.register(email, PASSWORD, "Ada again")
    assert (taken.value.code, taken.value.domain) == (grpc.StatusCode.ALREADY_EXISTS, AUTH_DOMAIN)
    with pytest.raises(errors.InvalidCredentials):
        await client.login(email, "not the password at all")
    logged_in = await client.login(email, PASSWORD)
    assert logged_in.user.id == registered.user.id
    assert (await client.get_me()).user.email == email
    assert client.tokens is not None
    assert client.tokens.refresh_token == logged_in.tokens.refresh_token


async def test_logout_ends_this_session_and_all_sessions_ends_the_others(
    wallet_server: RunningServer, auth_server: RunningServer
) -> None:
    async with (
        client_of(wallet_server, auth_server) as laptop,
        client_of(wallet_server, auth_server) as phone,
        client_of(wallet_server, auth_server) as tablet,
    ):
        email = (await log_in_new_user(laptop)).user.email
        await phone.login(email, PASSWORD)
        await tablet.login(email, PASSWORD)
        await laptop.logout()
        with pytest.raises(errors.NotLoggedIn):
            await laptop.create_wallet("EUR")
        await phone.refresh_tokens()  # another session: still alive
        await phone.logout(all_sessions=True)
        with pytest.raises(errors.RefreshTokenRevoked):
            await tablet.refresh_tokens()
        assert tablet.tokens is None  # the client forgot the dead session


async def test_a_password_change_ends_every_session(client: WalletClient) -> None:
    email = (await log_in_new_user(client)).user.email
    await client.change_password(PASSWORD, "a brand new passphrase")
    assert client.tokens is None
    with pytest.raises(errors.InvalidCredentials):
        await client.login(email, PASSWORD)
    await client.login(email, "a brand new passphrase")
    assert (await client.get_me()).user.email == email


async def test_a_service_account_logs_in_with_its_credentials(
    client: WalletClient, database_url: str
) -> None:
    with pytest.raises(errors.InvalidClient):
        await client.login_service("svc_unknown", "not-a-secret")
    client_id, secret = await new_service_account(database_url, ["wallet:credit"])
    issued = await client.login_service(client_id, secret)
    assert list(issued.scopes) == ["wallet:credit"]
    assert client.tokens is None  # a service has no refresh token
    with pytest.raises(errors.UserTokenRequired):
        await client.get_me()


async def test_a_users_token_is_refreshed_before_it_expires_once_for_concurrent_calls(
    wallet_server: RunningServer, short_lived_tokens: RunningServer, database_url: str
) -> None:
    async with client_of(wallet_server, short_lived_tokens) as client:
        login = await log_in_new_user(client)
        wallet = (await client.create_wallet("EUR")).wallet
        await asyncio.sleep(1.1)  # due: renewed at half of its 2 s life, in the background
        # Twenty calls find the token due at once. Two refreshes with one refresh token would
        # be a reuse: the service would revoke the session and the calls would fail.
        answers = await asyncio.gather(*(client.get_wallet(wallet.id) for _ in range(20)))
        assert {answer.wallet.id for answer in answers} == {wallet.id}
        await wait_until(lambda: client.tokens != login.tokens, "the renewal")
        tokens = client.tokens
        assert tokens is not None
        assert tokens.refresh_token != login.tokens.refresh_token
        session = claims_of(tokens.access_token)["sid"]
        assert refresh_tokens_of_session(database_url, session) == (2, False)


async def test_a_service_gets_a_new_token_when_its_token_is_due(
    wallet_server: RunningServer, short_lived_tokens: RunningServer, database_url: str
) -> None:
    async with client_of(wallet_server, short_lived_tokens) as client:
        await client.login_service(*await new_service_account(database_url, ["wallet:admin"]))
        first = await client.access_token()
        await asyncio.sleep(1.1)
        assert not (await client.list_wallets()).wallets  # due: renewed in the background
        second = first
        while second == first:
            await asyncio.sleep(0.02)
            second = await client.access_token()
        assert claims_of(second)["sub"] == claims_of(first)["sub"]
        assert not (await client.list_wallets()).wallets  # a call with the new token


def expired_copy(token: str, database_url: str) -> str:
    """The same token, expired 100 s ago (beyond the verifier's leeway), signed with the auth
    service's own key: what a client with a slow clock still thinks is fresh."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT id, private_key_pem FROM auth.signing_keys WHERE retired_at IS NULL"
        ).fetchone()
    assert row is not None
    key_id, private_pem = row
    now = int(time.time())
    claims = {**claims_of(token), "iat": now - 1000, "nbf": now - 1000, "exp": now - 100}
    private_key = serialization.load_pem_private_key(private_pem.encode(), None)
    return jwt.encode(
        claims,
        private_key,
        algorithm="EdDSA",
        headers={"kid": key_id, "typ": "at+jwt"},
    )


async def test_an_expired_token_is_renewed_once_and_the_call_goes_through(
    client: WalletClient, database_url: str
) -> None:
    login = await log_in_new_user(client)
    wallet = (await client.create_wallet("EUR")).wallet
    expired = expired_copy(login.tokens.access_token, database_url)
    saved = auth_pb2.TokenPair()
    saved.CopyFrom(login.tokens)
    saved.access_token = expired
    client.use_tokens(saved)  # say, restored from disk by a process whose clock is slow
    assert (await client.get_wallet(wallet.id)).wallet.id == wallet.id
    assert client.tokens is not None and client.tokens.access_token != expired

    client.use_token(expired)  # a bare token cannot be renewed: the error comes through
    with pytest.raises(errors.TokenExpired):
        await client.get_wallet(wallet.id)
