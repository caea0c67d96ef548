"""Concurrent money movements. Each test fails on a read-then-write implementation."""

import asyncio
import collections
import os
import subprocess
import sys
from typing import Any

import grpc
import psycopg

from shared.errors import error_info
from shared.migrations import migrate
from tests.wallet_helpers import Caller
from wallet_service.admin import check_invariants


async def outcome(awaitable: Any) -> str:
    """'OK', or the failure's status code and ErrorInfo reason."""
    try:
        await awaitable
    except grpc.aio.AioRpcError as error:
        info = error_info(error)
        return f"{error.code().name} {info.reason if info else '-'}"
    return "OK"


async def assert_invariants_hold(database_url: str) -> None:
    ok, report = await check_invariants(database_url)
    assert ok, report


async def test_200_concurrent_debits_of_1_from_100_leave_exactly_0(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = (await user.create_wallet()).id
    await payments.credit(wallet_id, 100)
    outcomes = await asyncio.gather(*(outcome(user.debit(wallet_id, 1)) for _ in range(200)))
    assert collections.Counter(outcomes) == {
        "OK": 100,
        "FAILED_PRECONDITION INSUFFICIENT_FUNDS": 100,
    }
    assert await user.balance(wallet_id) == 0
    await assert_invariants_hold(database_url)


async def test_opposite_transfers_never_deadlock_and_keep_the_total(
    user: Caller, other_user: Caller, payments: Caller, database_url: str
) -> None:
    first = (await user.create_wallet()).id
    second = (await other_user.create_wallet()).id
    await payments.credit(first, 1000)
    await payments.credit(second, 1000)
    calls = []
    for index in range(150):
        calls.append(outcome(user.transfer(first, second, 1 + index % 3)))
        calls.append(outcome(other_user.transfer(second, first, 1 + index % 5)))
    outcomes = await asyncio.gather(*calls)
    assert collections.Counter(outcomes) == {"OK": 300}
    assert await user.balance(first) + await other_user.balance(second) == 2000
    await assert_invariants_hold(database_url)


async def test_50_concurrent_requests_with_one_key_apply_once(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = (await user.create_wallet()).id
    await payments.credit(wallet_id, 1000)
    responses = await asyncio.gather(*(user.debit(wallet_id, 7, key="one-key") for _ in range(50)))
    assert len({response.transaction.id for response in responses}) == 1
    assert {response.balance_after for response in responses} == {993}
    assert await user.balance(wallet_id) == 993
    await assert_invariants_hold(database_url)


async def test_concurrent_credits_and_transfers_into_one_wallet_all_count(
    user: Caller, other_user: Caller, payments: Caller, database_url: str
) -> None:
    target = (await user.create_wallet()).id
    source = (await other_user.create_wallet()).id
    await payments.credit(source, 500)
    credits = [payments.credit(target, 3) for _ in range(100)]
    transfers = [other_user.transfer(source, target, 5) for _ in range(100)]
    outcomes = await asyncio.gather(*(outcome(call) for call in [*credits, *transfers]))
    assert collections.Counter(outcomes) == {"OK": 200}
    assert await user.balance(target) == 100 * 3 + 100 * 5
    assert await other_user.balance(source) == 0
    await assert_invariants_hold(database_url)


def run_invariant_command(database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wallet_service.admin", "check-invariants"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_invariant_command_passes_on_the_real_ledger(database_url: str) -> None:
    result = await asyncio.to_thread(run_invariant_command, database_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "invariants hold" in result.stderr


async def test_the_invariant_command_fails_on_a_drifted_balance(
    empty_database_url: str,
) -> None:
    migrate(empty_database_url, "wallet")
    with psycopg.connect(empty_database_url) as conn:
        conn.execute(
            "INSERT INTO wallet.wallets (user_id, currency, balance) VALUES ('u', 'EUR', 5)"
        )
    result = await asyncio.to_thread(run_invariant_command, empty_database_url)
    assert result.returncode == 1
    assert "INVARIANT VIOLATED" in result.stderr
