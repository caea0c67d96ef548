"""The Node.js client in clients/node, built from protos/ with @grpc/grpc-js, against the
session's real servers: it registers, logs in, moves money, holds and captures, reads history
and asserts every answer; this test then checks what it left through the wallet API."""

import json
import uuid

import pytest

from auth_service.admin import create_service_account
from shared.server import RunningServer
from tests.programs import NODE_CLIENT, run_program
from tests.wallet_helpers import Caller


@pytest.fixture(scope="session")
async def node_modules() -> None:
    """`npm ci` once per session, when clients/node/node_modules is missing."""
    if (NODE_CLIENT / "node_modules").is_dir():
        return
    result = await run_program(
        ["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, seconds=300
    )
    assert result.returncode == 0, result.output


async def run_node_example(
    auth_server: RunningServer, wallet_server: RunningServer, client_id: str, secret: str
) -> tuple[int, str]:
    result = await run_program(
        ["node", "example.js"],
        cwd=NODE_CLIENT,
        env={
            "AUTH_ADDRESS": f"127.0.0.1:{auth_server.port}",
            "WALLET_ADDRESS": f"127.0.0.1:{wallet_server.port}",
            "CLIENT_ID": client_id,
            "CLIENT_SECRET": secret,
        },
    )
    return result.returncode, result.output


async def test_node_client_registers_moves_money_holds_captures_and_reads_history(
    node_modules: None,
    auth_server: RunningServer,
    wallet_server: RunningServer,
    database_url: str,
    admin: Caller,
) -> None:
    client_id, secret = await create_service_account(
        database_url, f"node-{uuid.uuid4().hex[:8]}", ["wallet:credit", "wallet:hold"]
    )
    returncode, output = await run_node_example(auth_server, wallet_server, client_id, secret)
    assert returncode == 0, output

    # The balances the program reports are the ones the service holds.
    reported = json.loads(output.strip().splitlines()[-1])["balances"]
    assert sorted(reported.values()) == ["4500", "5500"]
    for wallet_id, balance in reported.items():
        assert await admin.balance(wallet_id) == int(balance)


async def test_node_client_fails_loudly_when_an_answer_is_wrong(
    node_modules: None, auth_server: RunningServer, wallet_server: RunningServer
) -> None:
    """The program's checks can fail: with a wrong secret it exits non-zero, naming why."""
    returncode, output = await run_node_example(
        auth_server, wallet_server, "svc_000000000000000000000000", "not-the-secret"
    )
    assert returncode != 0
    assert "UNAUTHENTICATED" in output, output
