"""The wallet server under operational trouble: a lost database, a shutdown mid-call."""

import asyncio
from typing import Any

import grpc
import psycopg
from psycopg import conninfo

from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from shared.migrations import migrate
from tests.databases import throwaway_database
from tests.wallet_helpers import Caller, expect_error, new_key
from wallet_service.config import WalletSettings
from wallet_service.server import start as start_wallet


async def private_wallet_server(settings: WalletSettings, database_url: str) -> Any:
    return await start_wallet(
        settings.model_copy(update={"database_url": database_url, "db_pool_min_size": 1})
    )


async def test_a_lost_database_answers_unavailable_and_moves_nothing(
    wallet_settings: WalletSettings, database_server_url: str, user: Caller
) -> None:
    with throwaway_database(database_server_url) as url:
        migrate(url, "wallet")
        running = await private_wallet_server(wallet_settings, url)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                caller = Caller(wallet_pb2_grpc.WalletServiceStub(channel), user.token)
                wallet = await caller.create_wallet()
                dbname = conninfo.conninfo_to_dict(url)["dbname"]
                with psycopg.connect(database_server_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
                await expect_error(
                    grpc.StatusCode.UNAVAILABLE,
                    "DATABASE_UNAVAILABLE",
                    caller.debit(wallet.id, 1),
                )
        finally:
            await running.stop(grace=0)


async def test_a_movement_whose_deadline_comes_while_the_pool_is_busy_is_deadline_exceeded(
    wallet_settings: WalletSettings, database_server_url: str, user: Caller, payments: Caller
) -> None:
    """The database answers, but every pooled connection is busy: the movement ran out of time
    (DEADLINE_EXCEEDED, as in a lock wait), it did not find the database unavailable."""
    with throwaway_database(database_server_url) as url:
        migrate(url, "wallet")
        busy_pool = {"db_pool_max_size": 2, "wallet_max_transactions": 1}
        running = await private_wallet_server(wallet_settings.model_copy(update=busy_pool), url)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = wallet_pb2_grpc.WalletServiceStub(channel)
                owner, crediting = Caller(stub, user.token), Caller(stub, payments.token)
                wallet = await owner.create_wallet()
                history = wallet_pb2.ListTransactionsRequest(wallet_id=wallet.id)
                with psycopg.connect(url) as blocker:
                    blocker.execute("LOCK TABLE wallet.ledger_entries IN ACCESS EXCLUSIVE MODE")
                    # Two history reads wait for that lock, holding both pooled connections.
                    reads = [
                        asyncio.ensure_future(owner.call("ListTransactions", history, 10))
                        for _ in range(2)
                    ]
                    await asyncio.sleep(0.5)
                    credit = wallet_pb2.CreditRequest(
                        wallet_id=wallet.id, amount=5, idempotency_key=new_key()
                    )
                    await expect_error(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        "DEADLINE_EXCEEDED",
                        crediting.call("Credit", credit, deadline_seconds=0.5),
                    )
                await asyncio.gather(*reads)  # the lock is gone: they finish
                assert await owner.balance(wallet.id) == 0
        finally:
            await running.stop(grace=0)


async def test_shutdown_lets_an_in_flight_movement_finish(
    wallet_settings: WalletSettings, database_server_url: str, user: Caller, payments: Caller
) -> None:
    with throwaway_database(database_server_url) as url:
        migrate(url, "wallet")
        running = await private_wallet_server(wallet_settings, url)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            owner = Caller(stub, user.token)
            credit_service = Caller(stub, payments.token)
            wallet = await owner.create_wallet()
            await credit_service.credit(wallet.id, 100)
            with psycopg.connect(url) as blocker:
                blocker.execute(
                    "SELECT 1 FROM wallet.wallets WHERE id = %s FOR UPDATE", (wallet.id,)
                )
                in_flight = asyncio.create_task(
                    owner.call(
                        "Debit",
                        wallet_pb2.DebitRequest(
                            wallet_id=wallet.id, amount=40, idempotency_key=new_key()
                        ),
                    )
                )
                await asyncio.sleep(0.3)  # the debit now waits for the row lock
                stopping = asyncio.create_task(running.stop(grace=10))
                await asyncio.sleep(0.3)
                blocker.rollback()  # release: the debit can finish during the grace period
            response = await in_flight
            await stopping
        assert response.balance_after == 60
