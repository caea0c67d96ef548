"""The restore drill (`make restore-drill`, shared/restore_drill.py) against a database whose
money was moved through the real services: it passes on a faithful copy, also while money
keeps moving, and fails when the copy differs from what was backed up."""

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest

from shared import restore_drill
from shared.restore_drill import DrillError, Figures
from tests.private_postgres import private_postgres
from tests.programs import run_program
from tests.service_pair import ServicePair, service_pair
from tests.wallet_helpers import Caller, expect_error, new_key, new_service, new_user


@dataclass
class Bank:
    pair: ServicePair
    ada: Caller
    grace: Caller
    payments: Caller
    ada_wallet: str
    grace_wallet: str


async def open_bank(pair: ServicePair) -> Bank:
    """Two users, EUR and USD wallets, and every kind of money movement, refusals included."""
    ada = await new_user(pair.auth_channel, pair.wallet_channel)
    grace = await new_user(pair.auth_channel, pair.wallet_channel)
    payments = await new_service(
        pair.auth_channel, pair.wallet_channel, pair.database_url, ["wallet:credit"]
    )
    ada_wallet, grace_wallet = (await ada.create_wallet()).id, (await grace.create_wallet()).id
    ada_dollars = (await ada.create_wallet("USD")).id
    await payments.credit(ada_wallet, 10_000)
    await payments.credit(ada_dollars, 700)
    await ada.debit(ada_wallet, 2_500)
    transfer = await ada.transfer(ada_wallet, grace_wallet, 4_000)
    await grace.refund(transfer.transaction.id, 1_000)
    hold = await ada.create_hold(ada_wallet, 600)
    await ada.capture(hold.hold.id, 400)
    await ada.create_hold(ada_wallet, 300)  # still held
    await expect_error(  # a refusal, recorded under its key
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
        ada.debit(ada_wallet, 1_000_000, key=new_key()),
    )
    return Bank(pair, ada, grace, payments, ada_wallet, grace_wallet)


@pytest.fixture(scope="module")
async def bank(database_server_url: str) -> AsyncIterator[Bank]:
    async with service_pair(database_server_url) as pair:
        yield await open_bank(pair)


@contextlib.asynccontextmanager
async def restored_copy(source_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, Figures]]:
    """A backup of the source restored into a new database: (its URL, the source's figures)."""
    tools = restore_drill.tool_folder(await restore_drill.server_major(source_url))
    backup = tmp_path / "backup.dump"
    figures = await restore_drill.take_backup(source_url, backup, tools)
    copy_url = await restore_drill.create_copy(source_url)
    try:
        await restore_drill.restore(backup, copy_url, tools)
        yield copy_url, figures
    finally:
        await restore_drill.drop_copy(source_url, copy_url)


def database_exists(server_url: str, name: str) -> bool:
    with psycopg.connect(server_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
        return row.fetchone() == (1,)


async def test_the_drill_restores_a_copy_that_matches_the_source_and_drops_it(
    bank: Bank,
) -> None:
    finished = await run_program(
        [".venv/bin/python", "-m", "shared.restore_drill"],
        env={"DATABASE_URL": bank.pair.database_url},
        seconds=60,
    )

    assert finished.returncode == 0, finished.output
    verdict = finished.output.splitlines()
    assert verdict[-1] == "RESTORE DRILL PASSED"
    checks = {line[8:24].strip(): line for line in verdict if line.startswith("  ")}
    assert set(checks) == {"restore", "invariants", "tables", "money", "transaction ids"}
    assert all(line.startswith("  ok") for line in checks.values()), finished.output
    money = "EUR balances 7100, in 10000, out 2900; USD balances 700, in 700, out 0"
    assert money in checks["money"]
    copy = re.search(r"-> (restore_drill_\w+) on", finished.output)
    assert copy is not None
    assert not database_exists(bank.pair.database_url, copy.group(1))


async def test_the_backup_and_its_figures_agree_while_money_keeps_moving(bank: Bank) -> None:
    moved = 0
    moving, stop = asyncio.Event(), asyncio.Event()

    async def keep_moving() -> None:
        nonlocal moved
        while not stop.is_set():
            await bank.ada.transfer(bank.ada_wallet, bank.grace_wallet, 1)
            await bank.grace.transfer(bank.grace_wallet, bank.ada_wallet, 1)
            moved += 2
            moving.set()

    mover = asyncio.create_task(keep_moving())
    try:
        await moving.wait()  # the load runs before the drill starts, and during it
        before = moved
        drill = await restore_drill.run_drill(bank.pair.database_url, None)
        during = moved - before
    finally:
        stop.set()
        await mover

    assert during > 0  # the source changed while it was backed up
    assert drill.passed, drill.checks


@pytest.mark.parametrize(
    ("damage", "failing", "expected"),
    [
        pytest.param(
            "UPDATE wallet.wallets SET balance = balance + 1 WHERE currency = 'USD'",
            {"invariants", "tables", "money"},
            "wallet.wallets: same 3 rows, different content",
            id="a balance changed",
        ),
        pytest.param(
            "ALTER TABLE wallet.transactions DISABLE TRIGGER transactions_append_only;"
            " UPDATE wallet.transactions SET reference = 'altered' WHERE type = 'debit'",
            {"tables"},  # the ledger still adds up: only the comparison sees it
            "wallet.transactions: same",
            id="a ledger row altered",
        ),
        pytest.param(
            "DROP TABLE wallet.idempotency_keys",
            {"tables"},
            "wallet.idempotency_keys is missing",
            id="a table missing",
        ),
        pytest.param(
            "DROP TABLE wallet.refunded_amounts",
            {"invariants", "tables"},
            "wallet.refunded_amounts is missing",
            id="a table the invariants read missing",
        ),
        pytest.param(
            "DELETE FROM auth.refresh_tokens WHERE token_hash IN"
            " (SELECT token_hash FROM auth.refresh_tokens LIMIT 1)",
            {"tables"},
            "auth.refresh_tokens has",
            id="a row missing",
        ),
    ],
)
async def test_a_copy_that_differs_from_the_source_fails_the_drill(
    bank: Bank, tmp_path: Path, damage: str, failing: set[str], expected: str
) -> None:
    async with restored_copy(bank.pair.database_url, tmp_path) as (copy_url, figures):
        assert all(check.ok for check in await restore_drill.check_copy(copy_url, figures))
        with psycopg.connect(copy_url) as conn:
            conn.execute(damage)
        checks = await restore_drill.check_copy(copy_url, figures)

    assert {check.name for check in checks if not check.ok} == failing
    assert expected in next(check.detail for check in checks if check.name == "tables")


async def test_a_damaged_backup_does_not_restore(bank: Bank, tmp_path: Path) -> None:
    source_url = bank.pair.database_url
    tools = restore_drill.tool_folder(await restore_drill.server_major(source_url))
    backup = tmp_path / "backup.dump"
    await restore_drill.take_backup(source_url, backup, tools)
    backup.write_bytes(backup.read_bytes()[: backup.stat().st_size // 2])
    copy_url = await restore_drill.create_copy(source_url)
    try:
        with pytest.raises(DrillError, match="pg_restore failed"):
            await restore_drill.restore(backup, copy_url, tools)
    finally:
        await restore_drill.drop_copy(source_url, copy_url)


@contextlib.contextmanager
def two_private_servers() -> Iterator[tuple[str, str]]:
    with private_postgres() as source, private_postgres() as target:
        yield source.url(), target.url()


@pytest.mark.slow
async def test_a_copy_on_a_server_that_used_fewer_transaction_ids_fails_the_drill() -> None:
    """The wallet stores transaction ids (wallets.last_xid, events.xid); on a server whose
    counter is behind them, movements on those wallets abort and events are held back."""
    with two_private_servers() as (source_server, target_server):
        async with service_pair(source_server) as pair:
            with psycopg.connect(pair.database_url, autocommit=True) as conn:
                for _ in range(2_000):  # a source that has lived longer than the new server
                    conn.execute("SELECT pg_current_xact_id()")
            await open_bank(pair)
            drill = await restore_drill.run_drill(pair.database_url, target_server)
    failed = [check for check in drill.checks if not check.ok]
    assert [check.name for check in failed] == ["transaction ids"]
    assert "carry transaction ids this server has not reached" in failed[0].detail
