"""Both services' logs over a whole session, at DEBUG, hold no password, access token, refresh
token, client secret or password hash: not in messages, extra fields or tracebacks."""

import io
import logging
from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest

from auth_service.admin import create_service_account, disable_service_account
from shared.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from shared.logs import json_handler
from tests.service_pair import ServicePair, service_pair
from tests.wallet_helpers import Caller

FIRST_PASSWORD = "first secret passphrase 4711"
SECOND_PASSWORD = "second secret passphrase 0815"
WRONG_GUESS = "a wrong guess that is secret too"


@pytest.fixture
async def logs() -> AsyncIterator[io.StringIO]:
    """Everything any logger writes meanwhile, formatted as in production, at DEBUG."""
    captured = io.StringIO()
    handler = json_handler("test", captured)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def expect_failure(awaitable: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await awaitable  # type: ignore[misc]


async def a_whole_session(pair: ServicePair) -> list[str]:
    """Every RPC, with successes and failures; returns every secret that went over the wire."""
    auth = auth_pb2_grpc.AuthServiceStub(pair.auth_channel)
    wallets = wallet_pb2_grpc.WalletServiceStub(pair.wallet_channel)
    email = "secret-keeper@example.com"
    await auth.Register(
        auth_pb2.RegisterRequest(email=email, password=FIRST_PASSWORD, display_name="Keeper")
    )
    await expect_failure(
        auth.Register(
            auth_pb2.RegisterRequest(email=email, password=FIRST_PASSWORD, display_name="Again")
        )
    )
    await expect_failure(auth.Login(auth_pb2.LoginRequest(email=email, password=WRONG_GUESS)))
    first = (await auth.Login(auth_pb2.LoginRequest(email=email, password=FIRST_PASSWORD))).tokens
    refreshed = (
        await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=first.refresh_token))
    ).tokens
    await expect_failure(  # reuse: the session ends
        auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=first.refresh_token))
    )
    second = (await auth.Login(auth_pb2.LoginRequest(email=email, password=FIRST_PASSWORD))).tokens
    user = Caller(wallets, second.access_token)
    await auth.GetMe(auth_pb2.GetMeRequest(), metadata=user.metadata)

    client_id, secret = await create_service_account(
        pair.database_url, "payments", ["wallet:credit"]
    )
    await expect_failure(
        auth.IssueServiceToken(
            auth_pb2.IssueServiceTokenRequest(client_id=client_id, client_secret=secret + "x")
        )
    )
    issued = await auth.IssueServiceToken(
        auth_pb2.IssueServiceTokenRequest(client_id=client_id, client_secret=secret)
    )
    payments = Caller(wallets, issued.access_token)

    wallet_id = (await user.create_wallet()).id
    await payments.credit(wallet_id, 500)
    await user.debit(wallet_id, 20)
    await expect_failure(user.debit(wallet_id, 10_000))
    await user.call("ListTransactions", wallet_pb2.ListTransactionsRequest(wallet_id=wallet_id))
    forged = second.access_token[:-6] + "AAAAAA"
    await expect_failure(
        Caller(wallets, forged).call("ListWallets", wallet_pb2.ListWalletsRequest())
    )
    await expect_failure(
        pair.wallet_channel.unary_unary("/wallet.v1.WalletService/Debit")(
            b"\xff\xff", metadata=user.metadata
        )
    )

    await auth.ChangePassword(
        auth_pb2.ChangePasswordRequest(
            current_password=FIRST_PASSWORD, new_password=SECOND_PASSWORD
        ),
        metadata=user.metadata,
    )
    await expect_failure(
        auth.ChangePassword(
            auth_pb2.ChangePasswordRequest(current_password=WRONG_GUESS, new_password=WRONG_GUESS),
            metadata=user.metadata,
        )
    )
    third = (await auth.Login(auth_pb2.LoginRequest(email=email, password=SECOND_PASSWORD))).tokens
    await auth.Logout(auth_pb2.LogoutRequest(refresh_token=third.refresh_token, all_sessions=True))
    await disable_service_account(pair.database_url, client_id)
    await auth.GetRevocations(auth_pb2.GetRevocationsRequest())

    tokens = [first, refreshed, second, third]
    return [
        FIRST_PASSWORD,
        SECOND_PASSWORD,
        WRONG_GUESS,
        secret,
        issued.access_token,
        issued.access_token.rsplit(".", 1)[1],  # a signature alone is a secret too
        forged,
        *(pair.access_token for pair in tokens),
        *(pair.access_token.rsplit(".", 1)[1] for pair in tokens),
        *(pair.refresh_token for pair in tokens),
    ]


def stored_secrets(database_url: str) -> list[str]:
    """Password hashes, and the hashes of refresh tokens and client secrets, as stored."""
    with psycopg.connect(database_url) as conn:
        hashes = [row[0] for row in conn.execute("SELECT password_hash FROM auth.users")]
        for query in (
            "SELECT token_hash FROM auth.refresh_tokens",
            "SELECT secret_hash FROM auth.service_accounts",
        ):
            hashes += [row[0].hex() for row in conn.execute(query)]
    return hashes


async def test_no_secret_reaches_the_logs_of_either_service(
    database_server_url: str, logs: io.StringIO
) -> None:
    async with service_pair(database_server_url) as pair:
        secrets = await a_whole_session(pair)
        secrets += stored_secrets(pair.database_url)
    text = logs.getvalue()
    # The capture works: every RPC of the session left its line.
    for method in ("Register", "Login", "ChangePassword", "IssueServiceToken", "Credit", "Debit"):
        assert f"/{method}" in text, method
    assert "malformed request" in text
    leaked = [secret for secret in secrets if secret in text]
    assert leaked == []
