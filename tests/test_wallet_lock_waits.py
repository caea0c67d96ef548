"""Waiting for locked wallets, and losing races: bounded, retried, never a business error."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest

from shared.errors import ServiceError
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from shared.server import RunningServer
from tests.wallet_helpers import (
    Caller,
    expect_error,
    idempotency_keys_of,
    insert_aged_idempotency_key,
    new_key,
)
from wallet_service.config import WalletSettings
from wallet_service.engine import runner as ledger
from wallet_service.server import start as start_wallet
from wallet_service.store import ledger as ledger_store


@pytest.fixture
def locked(database_url: str) -> Iterator[Any]:
    """lock(wallet_id) holds the wallet's row lock from another connection until the test ends."""
    with psycopg.connect(database_url) as blocker:

        def lock(wallet_id: str) -> None:
            blocker.execute("SELECT 1 FROM wallet.wallets WHERE id = %s FOR UPDATE", (wallet_id,))

        yield lock
        blocker.rollback()


async def funded(owner: Caller, payments: Caller, amount: int = 100) -> str:
    wallet_id = str((await owner.create_wallet()).id)
    await payments.credit(wallet_id, amount)
    return wallet_id


def lock_waiters(database_url: str) -> int:
    """Statements of the wallet service now waiting for a row lock on a wallet."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE %s",
            ("%FROM wallet.wallets%FOR UPDATE%",),
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
async def patient_server(wallet_settings: WalletSettings) -> AsyncIterator[RunningServer]:
    """A wallet server that would wait 30 s for a lock if nothing else bounded the wait."""
    running = await start_wallet(
        wallet_settings.model_copy(
            update={"lock_timeout_seconds": 30.0, "statement_timeout_seconds": 60.0}
        )
    )
    yield running
    await running.stop(grace=0)


async def test_a_client_deadline_bounds_the_servers_wait_for_a_lock(
    user: Caller, payments: Caller, database_url: str, locked: Any, patient_server: RunningServer
) -> None:
    wallet_id = await funded(user, payments)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{patient_server.port}") as channel:
        patient = Caller(wallet_pb2_grpc.WalletServiceStub(channel), user.token)
        locked(wallet_id)
        request = wallet_pb2.DebitRequest(wallet_id=wallet_id, amount=10, idempotency_key="slow")
        # The server answers itself, just before the deadline (an answer made by the client's
        # own deadline would carry no ErrorInfo)...
        await expect_error(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "DEADLINE_EXCEEDED",
            patient.call("Debit", request, deadline_seconds=2.0),
        )
        # ... and has stopped waiting, although the lock is still held.
        for _ in range(30):
            if lock_waiters(database_url) == 0:
                break
            await asyncio.sleep(0.1)
        assert lock_waiters(database_url) == 0


async def test_a_short_deadline_in_a_group_answers_only_its_own_call(
    user: Caller, payments: Caller, database_url: str, patient_server: RunningServer
) -> None:
    wallet_id = await funded(user, payments)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{patient_server.port}") as channel,
        await psycopg.AsyncConnection.connect(database_url) as blocker,
        await psycopg.AsyncConnection.connect(database_url) as other_instance,
    ):
        owner = Caller(wallet_pb2_grpc.WalletServiceStub(channel), user.token)
        lock = "SELECT 1 FROM wallet.wallets WHERE id = %s FOR UPDATE"
        await blocker.execute(lock, (wallet_id,))
        first = asyncio.create_task(owner.debit(wallet_id, 1))  # alone, waits for the row
        for _ in range(500):  # until it waits in PostgreSQL's queue for the row
            if lock_waiters(database_url):
                break
            await asyncio.sleep(0.01)

        async def hold_after_first() -> None:  # next in line after `first`, for 1.5 s
            await other_instance.execute(lock, (wallet_id,))
            await asyncio.sleep(1.5)
            await other_instance.commit()

        holding = asyncio.create_task(hold_after_first())
        await asyncio.sleep(0.2)

        def debit() -> wallet_pb2.DebitRequest:
            return wallet_pb2.DebitRequest(wallet_id=wallet_id, amount=1, idempotency_key=new_key())

        # These two wait for `first` in this process, then go as one group.
        patient = asyncio.create_task(owner.call("Debit", debit(), deadline_seconds=30))
        hasty = asyncio.create_task(owner.call("Debit", debit(), deadline_seconds=1.6))
        await asyncio.sleep(0.2)
        await blocker.commit()
        await first
        await holding
        await expect_error(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", hasty)
        # The hasty call's limit was not the patient one's: it waited on, and succeeded.
        assert (await patient).balance_after == 98


async def test_a_timed_out_movement_applied_nothing_and_its_key_still_works(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments)
    request = wallet_pb2.DebitRequest(wallet_id=wallet_id, amount=10, idempotency_key=new_key())
    with psycopg.connect(database_url) as blocker:
        blocker.execute("SELECT 1 FROM wallet.wallets WHERE id = %s FOR UPDATE", (wallet_id,))
        with pytest.raises(grpc.aio.AioRpcError):
            await user.call("Debit", request, deadline_seconds=0.5)
    assert await user.balance(wallet_id) == 100
    assert (await user.call("Debit", request)).balance_after == 90


@dataclass
class FakeCall:
    remaining: float | None
    is_cancelled: bool = False

    def time_remaining(self) -> float | None:
        return self.remaining

    def cancelled(self) -> bool:
        return self.is_cancelled


@pytest.mark.parametrize(
    ("remaining", "lock_ms", "by_deadline"),
    [
        (None, 5000, False),
        (60.0, 5000, False),
        (0.3, 240, True),
        (0.05, 40, True),
        (0.02, 16, True),
    ],
)
def test_the_time_remaining_sets_the_lock_timeout_with_a_proportional_margin(
    remaining: float | None, lock_ms: int, by_deadline: bool
) -> None:
    timeouts = ledger.timeouts_for(FakeCall(remaining), ledger.Limits())
    assert (timeouts.lock_ms, timeouts.lock_set_by_deadline) == (lock_ms, by_deadline)


def test_no_transaction_starts_for_a_call_past_its_deadline_or_cancelled() -> None:
    for call, reason in (
        (FakeCall(0.001), "DEADLINE_EXCEEDED"),
        (FakeCall(-1.0), "DEADLINE_EXCEEDED"),
        (FakeCall(5.0, is_cancelled=True), "CANCELLED"),
    ):
        with pytest.raises(ServiceError) as raised:
            ledger.timeouts_for(call, ledger.Limits())
        assert raised.value.reason == reason


async def test_a_busy_wallet_with_time_left_is_aborted_not_timed_out(
    user: Caller, payments: Caller, locked: Any
) -> None:
    wallet_id = await funded(user, payments)
    locked(wallet_id)
    # The server's lock timeout (1 s in tests) passes long before this deadline.
    await expect_error(
        grpc.StatusCode.ABORTED,
        "LOCK_TIMEOUT",
        user.call(
            "Debit",
            wallet_pb2.DebitRequest(wallet_id=wallet_id, amount=1, idempotency_key=new_key()),
            deadline_seconds=20,
        ),
    )


async def test_without_a_deadline_a_long_lock_wait_is_aborted_not_refused(
    user: Caller, payments: Caller, locked: Any
) -> None:
    wallet_id = await funded(user, payments)
    locked(wallet_id)
    request = wallet_pb2.DebitRequest(wallet_id=wallet_id, amount=10, idempotency_key=new_key())
    await expect_error(
        grpc.StatusCode.ABORTED,
        "LOCK_TIMEOUT",
        user.stub.Debit(request, metadata=user.metadata),  # no deadline
    )


async def test_another_users_locked_wallet_is_not_found_at_once(
    user: Caller, other_user: Caller, payments: Caller, locked: Any
) -> None:
    wallet_id = await funded(user, payments)
    locked(wallet_id)
    # No wait for the owner's lock: the row is not the caller's, so it is not even locked.
    await expect_error(
        grpc.StatusCode.NOT_FOUND,
        "WALLET_NOT_FOUND",
        other_user.call(
            "Debit",
            wallet_pb2.DebitRequest(wallet_id=wallet_id, amount=1, idempotency_key=new_key()),
            deadline_seconds=0.5,
        ),
    )


def failing_first(times: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Makes the next `times` movements fail with a serialization failure (40001)."""
    real = ledger_store.send_write
    calls: list[int] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= times:
            raise psycopg.errors.SerializationFailure("could not serialize access")
        return await real(*args, **kwargs)

    monkeypatch.setattr(ledger_store, "send_write", flaky)
    return calls


async def test_serialization_failures_are_retried_inside_the_service(
    user: Caller, payments: Caller, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    wallet_id = await funded(user, payments)
    calls = failing_first(2, monkeypatch)
    response = await user.debit(wallet_id, 30)
    assert response.balance_after == 70
    assert len(calls) == 3
    assert await user.balance(wallet_id) == 70


async def test_a_race_lost_on_every_attempt_is_aborted_never_insufficient_funds(
    user: Caller, payments: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    wallet_id = await funded(user, payments)
    calls = failing_first(1000, monkeypatch)
    key = new_key()
    await expect_error(grpc.StatusCode.ABORTED, "CONCURRENT_UPDATE", user.debit(wallet_id, 30, key))
    assert len(calls) == ledger.MAX_ATTEMPTS
    monkeypatch.undo()
    # Nothing was applied or recorded: the same key now succeeds, once.
    assert (await user.debit(wallet_id, 30, key)).balance_after == 70
    assert await user.balance(wallet_id) == 70


async def test_the_service_cleans_expired_idempotency_keys_periodically(
    wallet_settings: WalletSettings, database_url: str
) -> None:
    for key, age_hours in (("periodic-old", 30), ("periodic-young", 1)):
        insert_aged_idempotency_key(database_url, "periodic-test", key, age_hours)
    running = await start_wallet(
        wallet_settings.model_copy(update={"idempotency_cleanup_interval_seconds": 0.2})
    )
    try:
        for _ in range(50):
            if idempotency_keys_of(database_url, "periodic-test") == ["periodic-young"]:
                break
            await asyncio.sleep(0.2)
        assert idempotency_keys_of(database_url, "periodic-test") == ["periodic-young"]
    finally:
        await running.stop(grace=0)
