"""Faults between the wallet service and its database: a COMMIT whose answer is lost, dead
pooled connections, a database that is down and comes back. Every answer must be true: an
outcome is only "unknown" when the service cannot find out, and the service finds out."""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from shared.migrations import migrate
from shared.server import RunningServer
from tests.databases import throwaway_database
from tests.db_proxy import DatabaseProxy, database_proxy
from tests.wallet_helpers import Caller, expect_error, new_key
from wallet_service.admin import check_invariants
from wallet_service.config import WalletSettings
from wallet_service.server import start as start_wallet

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ProxiedWallet:
    """A wallet server of its own whose database connections go through a fault proxy."""

    proxy: DatabaseProxy
    server: RunningServer
    database_url: str  # direct, for checks
    owner: Caller
    credit_service: Caller
    health: health_pb2_grpc.HealthStub

    async def status(self) -> int:
        response = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(response.status)


@pytest.fixture
async def proxied(
    wallet_settings: WalletSettings, database_server_url: str, user: Caller, payments: Caller
) -> AsyncIterator[ProxiedWallet]:
    async with proxied_wallet(wallet_settings, database_server_url, user, payments) as wallet:
        yield wallet


@contextlib.asynccontextmanager
async def proxied_wallet(
    wallet_settings: WalletSettings,
    database_server_url: str,
    user: Caller,
    payments: Caller,
    **settings: object,
) -> AsyncIterator[ProxiedWallet]:
    with throwaway_database(database_server_url) as url:
        migrate(url, "wallet")
        async with database_proxy(url) as proxy:
            server = await start_wallet(
                wallet_settings.model_copy(
                    update={
                        "database_url": proxy.url(url),
                        "db_pool_min_size": 2,
                        "db_pool_max_size": 4,
                        "health_check_interval_seconds": 0.5,
                        **settings,
                    }
                )
            )
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                    stub = wallet_pb2_grpc.WalletServiceStub(channel)
                    yield ProxiedWallet(
                        proxy,
                        server,
                        url,
                        Caller(stub, user.token, user.subject),
                        Caller(stub, payments.token),
                        health_pb2_grpc.HealthStub(channel),
                    )
            finally:
                await server.stop(grace=0)


def transactions_with_key(database_url: str, key: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM wallet.transactions WHERE idempotency_key = %s", (key,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_commit_whose_answer_was_lost_is_answered_with_its_outcome(
    proxied: ProxiedWallet,
) -> None:
    wallet = await proxied.owner.create_wallet()
    await proxied.credit_service.credit(wallet.id, 1000)
    key = new_key()
    proxied.proxy.cut_after_next_commit(key.encode())
    # The debit commits, the connection dies before the service hears so: the service must
    # find out on a fresh connection and answer the real outcome, not UNAVAILABLE.
    response = await proxied.owner.debit(wallet.id, 300, key)
    assert proxied.proxy.commits_to_cut == 0, "the fault was not injected"
    assert response.balance_after == 700
    assert await proxied.owner.balance(wallet.id) == 700
    assert transactions_with_key(proxied.database_url, key) == 1
    again = await proxied.owner.debit(wallet.id, 300, key)
    assert again.transaction.id == response.transaction.id
    ok, report = await check_invariants(proxied.database_url)
    assert ok, report


@pytest.mark.parametrize(
    "status", [wallet_pb2.WALLET_STATUS_FROZEN, wallet_pb2.WALLET_STATUS_CLOSED]
)
async def test_a_status_change_whose_commit_answer_was_lost_is_answered_and_recorded_once(
    proxied: ProxiedWallet, admin: Caller, status: int
) -> None:
    wallet = await proxied.owner.create_wallet()
    operator = Caller(proxied.owner.stub, admin.token)
    # The change takes no key: the service's retry must find it done, not refuse it (a closed
    # wallet stays closed) or record it twice.
    wallet_id = uuid.UUID(wallet.id)  # as psycopg may send it: in an array, or binary
    proxied.proxy.cut_after_next_commit(wallet_id.hex.encode(), wallet_id.bytes)
    response = await operator.call(
        "UpdateWalletStatus",
        wallet_pb2.UpdateWalletStatusRequest(wallet_id=wallet.id, status=status, reason="r"),
    )
    assert proxied.proxy.commits_to_cut == 0, "the fault was not injected"
    assert response.wallet.status == status
    with psycopg.connect(proxied.database_url) as conn:
        changes = conn.execute(
            "SELECT count(*) FROM wallet.wallet_status_changes WHERE wallet_id = %s",
            (wallet.id,),
        ).fetchone()
    assert changes == (1,)


async def test_a_database_that_stops_answering_mid_transaction_does_not_hold_the_wallet(
    wallet_settings: WalletSettings, database_server_url: str, user: Caller, payments: Caller
) -> None:
    async with proxied_wallet(
        wallet_settings,
        database_server_url,
        user,
        payments,
        lock_timeout_seconds=0.5,
        statement_timeout_seconds=1.0,
    ) as proxied:
        wallet = await proxied.owner.create_wallet()
        await proxied.credit_service.credit(wallet.id, 1000)
        key = new_key()
        # Every answer of the database is lost for a moment (a partition): the debit's
        # transaction never hears back, on a connection that stays open.
        proxied.proxy.answers_muted = True
        lost = asyncio.create_task(
            proxied.owner.call(
                "Debit",
                wallet_pb2.DebitRequest(wallet_id=wallet.id, amount=100, idempotency_key=key),
            )
        )
        await asyncio.sleep(0.3)
        proxied.proxy.answers_muted = False
        # The attempt is given up after its limits and a margin; the retry finds the outcome.
        try:
            first = await lost
            assert first.balance_after == 900
        except grpc.aio.AioRpcError as error:  # told to retry: the outcome is unknown to it
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        again = await proxied.owner.debit(wallet.id, 100, key)
        assert again.balance_after == 900
        # The wallet is free again for everyone else.
        assert (await proxied.owner.debit(wallet.id, 1)).balance_after == 899
        assert transactions_with_key(proxied.database_url, key) == 1


async def test_dead_pooled_connections_after_a_database_blip_cost_no_call(
    proxied: ProxiedWallet,
) -> None:
    wallet = await proxied.owner.create_wallet()
    for _ in range(4):  # use several pooled connections
        await asyncio.gather(*(proxied.owner.balance(wallet.id) for _ in range(4)))
    proxied.proxy.cut_all()  # every pooled connection is now dead, the database is fine
    await asyncio.sleep(0.1)
    for _ in range(10):
        assert await proxied.owner.balance(wallet.id) == 0
        assert await proxied.status() == SERVING


async def test_while_the_database_is_down_calls_fail_fast_and_health_says_so(
    proxied: ProxiedWallet,
) -> None:
    wallet = await proxied.owner.create_wallet()
    proxied.proxy.refusing = True
    proxied.proxy.cut_all()
    # Well within the client's deadline, not after it: UNAVAILABLE, never DEADLINE_EXCEEDED.
    await expect_error(
        grpc.StatusCode.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        proxied.owner.call(
            "GetWallet", wallet_pb2.GetWalletRequest(wallet_id=wallet.id), deadline_seconds=3
        ),
    )
    await wait_for(lambda: proxied.status(), NOT_SERVING)
    await expect_error(
        grpc.StatusCode.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        proxied.owner.call(
            "Debit",
            wallet_pb2.DebitRequest(wallet_id=wallet.id, amount=1, idempotency_key=new_key()),
            deadline_seconds=3,
        ),
    )
    proxied.proxy.refusing = False
    back = time.monotonic()
    await wait_for(lambda: proxied.status(), SERVING)
    assert await proxied.owner.balance(wallet.id) == 0
    # Recovery comes from the service's own probe, not from a long reconnection backoff.
    assert time.monotonic() - back < 5


async def wait_for(read: object, expected: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while True:
        value = await read()  # type: ignore[operator]
        if value == expected or time.monotonic() > deadline:
            assert value == expected
            return
        await asyncio.sleep(0.1)


# --- calls the client gave up on --------------------------------------------------------------


def handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_method": f"/wallet.v1.WalletService/{method}", "grpc_code": code},
    )
    return value or 0.0


async def test_cancelled_and_timed_out_calls_are_counted_as_such_without_errors_logged(
    user: Caller, payments: Caller, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    wallet_id = (await user.create_wallet()).id
    await payments.credit(wallet_id, 100)
    before = {
        code: handled("Debit", code) for code in ("CANCELLED", "DEADLINE_EXCEEDED", "UNKNOWN")
    }
    with psycopg.connect(database_url) as blocker:
        blocker.execute("SELECT 1 FROM wallet.wallets WHERE id = %s FOR UPDATE", (wallet_id,))
        await expect_error(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "DEADLINE_EXCEEDED",
            user.call(
                "Debit",
                wallet_pb2.DebitRequest(wallet_id=wallet_id, amount=1, idempotency_key=new_key()),
                deadline_seconds=0.3,
            ),
        )
        call = user.stub.Debit(
            wallet_pb2.DebitRequest(wallet_id=wallet_id, amount=1, idempotency_key=new_key()),
            metadata=user.metadata,
        )
        await asyncio.sleep(0.3)
        call.cancel()
        await asyncio.sleep(0.3)
    await asyncio.sleep(0.2)
    assert handled("Debit", "DEADLINE_EXCEEDED") == before["DEADLINE_EXCEEDED"] + 1
    assert handled("Debit", "CANCELLED") == before["CANCELLED"] + 1
    assert handled("Debit", "UNKNOWN") == before["UNKNOWN"]
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []
    assert await user.balance(wallet_id) == 100


async def test_calls_whose_deadline_passes_as_they_start_are_not_errors(
    user: Caller, caplog: pytest.LogCaptureFixture
) -> None:
    """A deadline can pass between grpc starting a handler and the handler's first send, or
    while the call waits for a pooled connection: either way the call is DEADLINE_EXCEEDED
    (not UNKNOWN, not UNAVAILABLE), and nothing is logged as an error."""
    wallet_id = (await user.create_wallet()).id
    unknown_before = handled("GetWallet", "UNKNOWN")
    request = wallet_pb2.GetWalletRequest(wallet_id=wallet_id)
    codes = []
    # The race is rare (a few calls in 6,000): 150 waves of calls with deadlines of 1 to 40 ms.
    for _ in range(150):
        calls = [
            user.stub.GetWallet(request, metadata=user.metadata, timeout=0.001 * (1 + i))
            for i in range(40)
        ]
        codes += [
            outcome.code() if isinstance(outcome, grpc.aio.AioRpcError) else grpc.StatusCode.OK
            for outcome in await asyncio.gather(*calls, return_exceptions=True)
        ]
    # 40 calls share 10 connections: one that waited for a connection until its deadline is
    # DEADLINE_EXCEEDED too, not UNAVAILABLE (the database is fine).
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}, set(codes)
    await asyncio.sleep(0.2)
    assert handled("GetWallet", "UNKNOWN") == unknown_before
    assert [
        record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR
    ] == []


async def test_a_short_deadline_can_succeed_on_a_free_wallet(
    user: Caller, payments: Caller
) -> None:
    wallet_id = (await user.create_wallet()).id
    await payments.credit(wallet_id, 100)
    outcomes = []
    for _ in range(5):  # the machine may be busy: one success in five proves the point
        try:
            await user.call(
                "Debit",
                wallet_pb2.DebitRequest(wallet_id=wallet_id, amount=1, idempotency_key=new_key()),
                deadline_seconds=0.08,
            )
            outcomes.append("OK")
        except grpc.aio.AioRpcError as error:
            outcomes.append(error.code().name)
    assert "OK" in outcomes, outcomes
    assert await user.balance(wallet_id) == 100 - outcomes.count("OK")
