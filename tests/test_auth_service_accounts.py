"""Service accounts: the operator commands and IssueServiceToken."""

import asyncio
import hashlib
import json
import os
import re
import sys
import time

import grpc
import psycopg
import pytest

from auth_service.admin import create_service_account, disable_service_account
from shared.gen.auth.v1 import auth_pb2
from shared.tokens import TokenVerifier, grpc_key_source
from tests.auth_helpers import auth_stub, expect_auth_error, register_and_login


async def issue(
    auth_channel: grpc.aio.Channel, client_id: str, secret: str
) -> auth_pb2.IssueServiceTokenResponse:
    return await auth_stub(auth_channel).IssueServiceToken(
        auth_pb2.IssueServiceTokenRequest(client_id=client_id, client_secret=secret)
    )


def verifier_for(auth_channel: grpc.aio.Channel) -> TokenVerifier:
    return TokenVerifier(
        grpc_key_source(auth_channel), issuer="wallet-system-auth", audience="wallet-system"
    )


async def test_a_service_token_carries_the_accounts_scopes(
    auth_channel: grpc.aio.Channel, database_url: str
) -> None:
    client_id, secret = await create_service_account(
        database_url, "payments", ["wallet:credit", "reports:read"]
    )
    response = await issue(auth_channel, client_id, secret)
    assert list(response.scopes) == ["reports:read", "wallet:credit"]
    assert response.token_type == "Bearer"
    assert response.access_token_expire_time.ToSeconds() == pytest.approx(time.time() + 900, abs=60)
    principal = await verifier_for(auth_channel).verify(response.access_token)
    assert principal.subject == client_id
    assert principal.scopes == {"wallet:credit", "reports:read"}
    assert principal.has_scope("wallet:credit")
    assert not principal.has_scope("wallet:admin")


async def test_a_user_token_carries_no_scope(auth_channel: grpc.aio.Channel) -> None:
    user_id, access_token = await register_and_login(auth_channel)
    principal = await verifier_for(auth_channel).verify(access_token)
    assert principal.subject == user_id
    assert principal.scopes == frozenset()


@pytest.mark.parametrize("case", ["wrong secret", "unknown client", "empty"])
async def test_bad_client_credentials_are_refused_alike(
    auth_channel: grpc.aio.Channel, database_url: str, case: str
) -> None:
    client_id, secret = await create_service_account(database_url, "payments", ["wallet:credit"])
    credentials = {
        "wrong secret": (client_id, secret + "x"),
        "unknown client": ("svc_unknown", secret),
        "empty": ("", ""),
    }[case]
    await expect_auth_error(
        grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT", issue(auth_channel, *credentials)
    )


async def test_a_disabled_account_gets_no_tokens(
    auth_channel: grpc.aio.Channel, database_url: str
) -> None:
    client_id, secret = await create_service_account(database_url, "old job", ["wallet:credit"])
    await issue(auth_channel, client_id, secret)
    assert await disable_service_account(database_url, client_id)
    assert not await disable_service_account(database_url, client_id)
    await expect_auth_error(
        grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT", issue(auth_channel, client_id, secret)
    )


async def test_the_secret_is_stored_only_as_a_hash(database_url: str) -> None:
    client_id, secret = await create_service_account(database_url, "payments", ["wallet:credit"])
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT secret_hash, name, scopes FROM auth.service_accounts WHERE client_id = %s",
            (client_id,),
        ).fetchone()
    assert row == (hashlib.sha256(secret.encode()).digest(), "payments", ["wallet:credit"])


@pytest.mark.parametrize(
    ("name", "scopes"),
    [
        ("", ["wallet:credit"]),
        ("payments", []),
        ("payments", ["bad\\scope"]),
        ("pay\tments", ["a"]),
    ],
)
async def test_create_service_account_refuses_a_bad_name_or_scope(
    database_url: str, name: str, scopes: list[str]
) -> None:
    with pytest.raises(ValueError):
        await create_service_account(database_url, name, scopes)


async def run_admin(database_url: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "auth_service.admin",
        *args,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_operator_command_prints_credentials_that_work(
    auth_channel: grpc.aio.Channel, database_url: str
) -> None:
    code, out, _ = await run_admin(
        database_url, "create-service-account", "--name", "payments", "--scopes", "wallet:credit"
    )
    assert code == 0
    client_id = re.search(r"client_id:\s+(\S+)", out)
    secret = re.search(r"client_secret:\s+(\S+)", out)
    assert client_id and secret
    response = await issue(auth_channel, client_id.group(1), secret.group(1))
    assert list(response.scopes) == ["wallet:credit"]

    code, out, _ = await run_admin(
        database_url, "disable-service-account", "--client-id", client_id.group(1)
    )
    assert code == 0
    await expect_auth_error(
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CLIENT",
        issue(auth_channel, client_id.group(1), secret.group(1)),
    )


async def test_the_operator_command_prints_json_that_issue_service_token_takes(
    auth_channel: grpc.aio.Channel, database_url: str
) -> None:
    code, out, _ = await run_admin(
        database_url,
        "create-service-account",
        "--name",
        "ops",
        "--scopes",
        "wallet:admin",
        "--json",
    )
    assert code == 0
    credentials = json.loads(out)
    assert set(credentials) == {"client_id", "client_secret"}
    response = await issue(auth_channel, credentials["client_id"], credentials["client_secret"])
    assert list(response.scopes) == ["wallet:admin"]


async def test_the_operator_command_refuses_a_bad_scope(database_url: str) -> None:
    code, out, err = await run_admin(
        database_url, "create-service-account", "--name", "payments", "--scopes", 'bad"scope'
    )
    assert code == 2
    assert "not a valid scope" in err
    assert "client_secret" not in out
