"""The client library's retries against real servers: an answer lost after the money moved, a
wallet service process killed in the middle of a call and started again, a server that stays
away; each time the same request with the same idempotency key, and money moved once.
Refusals are never retried."""

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from shared.server import RunningServer
from tests.client_helpers import (
    client_of,
    log_in_new_user,
    service_client,
    wait_until,
    wallet_process_of,
)
from tests.db_proxy import DatabaseProxy
from tests.processes import ServiceProcess
from tests.test_wallet_lock_waits import lock_waiters
from tests.test_wallet_reliability import transactions_with_key
from wallet_client import RetryPolicy, WalletClient, errors


def retries_logged(caplog: pytest.LogCaptureFixture, key: str) -> int:
    return sum(
        1
        for record in caplog.records
        if record.name == "wallet_client" and "retrying" in record.message and key in record.message
    )


@pytest.fixture
async def bank(
    wallet_server: RunningServer, auth_server: RunningServer, database_url: str
) -> AsyncIterator[WalletClient]:
    async with service_client(wallet_server, auth_server, database_url, ["wallet:credit"]) as bank:
        yield bank


@pytest.fixture
async def proxy(wallet_server: RunningServer) -> AsyncIterator[DatabaseProxy]:
    """A TCP proxy in front of the session's wallet server."""
    proxy = DatabaseProxy("127.0.0.1", wallet_server.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def wallet_process(
    database_url: str, auth_server: RunningServer, tmp_path: Path
) -> AsyncIterator[ServiceProcess]:
    """A wallet service process that would wait 30 s for a row lock."""
    async with wallet_process_of(
        database_url, auth_server, tmp_path, LOCK_TIMEOUT_SECONDS="30"
    ) as process:
        yield process


async def test_an_answer_lost_after_the_money_moved_is_retried_with_the_same_key(
    proxy: DatabaseProxy,
    auth_server: RunningServer,
    bank: WalletClient,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with client_of(f"127.0.0.1:{proxy.port}", auth_server) as ada:
        await log_in_new_user(ada)
        wallet_id = (await ada.create_wallet("EUR")).wallet.id  # the channel is up
        await bank.credit(wallet_id, 1_000)
        proxy.answers_muted = True
        debit = asyncio.create_task(ada.debit(wallet_id, 300, idempotency_key="lost-answer"))
        # The debit commits; its answer goes nowhere. Then the connection dies, as when a
        # balancer or a server's host goes away: the client hears UNAVAILABLE.
        await wait_until(lambda: transactions_with_key(database_url, "lost-answer"), "the commit")
        proxy.answers_muted = False
        proxy.cut_all()
        answer = await debit
    assert (answer.balance_after, answer.transaction.idempotency_key) == (700, "lost-answer")
    assert transactions_with_key(database_url, "lost-answer") == 1
    assert (await bank.credit(wallet_id, 1)).transaction  # the wallet: 700 + 1, debited once
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT balance FROM wallet.wallets WHERE id = %s", (wallet_id,))
        assert row.fetchone() == (701,)
    assert retries_logged(caplog, "lost-answer") >= 1


async def test_a_call_in_flight_when_the_wallet_server_crashes_is_retried_with_its_key(
    wallet_process: ServiceProcess,
    auth_server: RunningServer,
    bank: WalletClient,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with client_of(wallet_process.address, auth_server) as ada:
        await log_in_new_user(ada)
        wallet_id = (await ada.create_wallet("EUR")).wallet.id
        await bank.credit(wallet_id, 1_000)
        with psycopg.connect(database_url) as blocker:
            # The wallet is locked elsewhere: the debit waits inside the server...
            blocker.execute("SELECT 1 FROM wallet.wallets WHERE id = %s FOR UPDATE", (wallet_id,))
            debit = asyncio.create_task(ada.debit(wallet_id, 300, idempotency_key="restart"))
            await wait_until(lambda: lock_waiters(database_url) == 1, "the debit to wait")
            # ... when its process is killed (its PostgreSQL session may even live on and
            # commit), and started again on the same port while the client retries.
            wallet_process.kill()
            wallet_process.start()
            blocker.rollback()
        answer = await debit
    assert answer.balance_after == 700
    assert transactions_with_key(database_url, "restart") == 1
    assert retries_logged(caplog, "restart") >= 1


async def test_an_outcome_still_unknown_when_the_budget_ends_carries_the_key_to_retry_with(
    wallet_process: ServiceProcess,
    auth_server: RunningServer,
    bank: WalletClient,
    database_url: str,
) -> None:
    impatient = RetryPolicy(attempt_timeout=0.5, total_timeout=1.0)
    async with client_of(wallet_process.address, auth_server, retry=impatient) as ada:
        await log_in_new_user(ada)
        wallet_id = (await ada.create_wallet("EUR")).wallet.id
        await bank.credit(wallet_id, 1_000)
        wallet_process.kill()
        with pytest.raises(errors.OutcomeUnknown) as unknown:
            await ada.debit(wallet_id, 250)
        key = unknown.value.idempotency_key
        assert key  # made up by the client, and handed back so the caller can retry
        wallet_process.start()
        patient = ada.with_retry_policy(RetryPolicy())  # the channel may take a second to return
        answer = await patient.debit(wallet_id, 250, idempotency_key=key)
        again = await patient.debit(wallet_id, 250, idempotency_key=key)
    assert (answer.balance_after, again.transaction.id) == (750, answer.transaction.id)
    assert transactions_with_key(database_url, key) == 1


async def test_refusals_are_answers_and_are_not_retried(
    wallet_server: RunningServer,
    auth_server: RunningServer,
    bank: WalletClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "wallet_client")
    async with client_of(wallet_server, auth_server) as ada:
        await log_in_new_user(ada)
        wallet_id = (await ada.create_wallet("EUR")).wallet.id
        await bank.credit(wallet_id, 100)
        with pytest.raises(errors.InsufficientFunds):
            await ada.debit(wallet_id, 101, idempotency_key="refused")
        with pytest.raises(errors.IdempotencyKeyReused):
            await ada.debit(wallet_id, 5, idempotency_key="refused")
        with pytest.raises(errors.InvalidAmount):
            await ada.debit(wallet_id, 0, idempotency_key="refused-too")
    assert not [r for r in caplog.records if r.name == "wallet_client"]
