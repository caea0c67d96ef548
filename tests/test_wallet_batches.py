"""ExecuteBatch: all or nothing under one key, one global lock order, a refusal names its
movement; and metadata, which every movement can carry."""

import asyncio
import collections

import grpc
import psycopg

from shared.errors import error_info
from shared.gen.wallet.v1 import wallet_pb2
from shared.gen.wallet.v1.wallet_pb2_grpc import WalletServiceStub
from tests.test_wallet_concurrency import assert_invariants_hold, outcome
from tests.test_wallet_holds import funded
from tests.test_wallet_ledger import forget_keys_of
from tests.wallet_helpers import Caller, expect_error, new_key, new_user
from wallet_service.config import WalletSettings
from wallet_service.server import start as start_wallet

PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def transfer(
    source: str, destination: str, amount: int, **fields: object
) -> wallet_pb2.BatchMovement:
    return wallet_pb2.BatchMovement(
        transfer=wallet_pb2.BatchTransfer(
            source_wallet_id=source, destination_wallet_id=destination, amount=amount, **fields
        )
    )


def debit(wallet_id: str, amount: int) -> wallet_pb2.BatchMovement:
    return wallet_pb2.BatchMovement(debit=wallet_pb2.BatchDebit(wallet_id=wallet_id, amount=amount))


def credit(wallet_id: str, amount: int) -> wallet_pb2.BatchMovement:
    return wallet_pb2.BatchMovement(
        credit=wallet_pb2.BatchCredit(wallet_id=wallet_id, amount=amount)
    )


async def batch(
    caller: Caller, *movements: wallet_pb2.BatchMovement, key: str | None = None
) -> wallet_pb2.ExecuteBatchResponse:
    return await caller.call(
        "ExecuteBatch",
        wallet_pb2.ExecuteBatchRequest(idempotency_key=key or new_key(), movements=movements),
    )


def transaction_count(database_url: str, requested_by: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM wallet.transactions WHERE requested_by = %s", (requested_by,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_payout_splits_one_payment_across_wallets_at_once(
    user: Caller, other_user: Caller, payments: Caller, database_url: str
) -> None:
    marketplace = await funded(user, payments, 10_000)
    seller = (await other_user.create_wallet()).id
    answer = await batch(
        user,
        transfer(marketplace, seller, 9_000, reference="order 12", metadata={"order": "12"}),
        debit(marketplace, 500),
        key="payout-12",
    )
    assert [t.type for t in answer.transactions] == [
        wallet_pb2.TRANSACTION_TYPE_TRANSFER,
        wallet_pb2.TRANSACTION_TYPE_DEBIT,
    ]
    assert [t.batch_index for t in answer.transactions] == [0, 1]
    assert answer.transactions[0].metadata == {"order": "12"}
    # Balances after the whole batch, of the wallets the caller may read.
    assert {(b.wallet_id, b.balance_after) for b in answer.balances_after} == {(marketplace, 500)}
    assert await other_user.balance(seller) == 9_000
    again = await batch(
        user,
        transfer(marketplace, seller, 9_000, reference="order 12", metadata={"order": "12"}),
        debit(marketplace, 500),
        key="payout-12",
    )
    assert again == answer
    assert await user.balance(marketplace) == 500
    await assert_invariants_hold(database_url)


async def test_a_refused_movement_refuses_the_batch_and_names_its_index(
    user: Caller, other_user: Caller, payments: Caller, database_url: str
) -> None:
    source = await funded(user, payments, 100)
    destination = (await other_user.create_wallet()).id
    before = transaction_count(database_url, user.subject)
    error = await expect_error(
        PRECONDITION,
        "INSUFFICIENT_FUNDS",
        batch(user, transfer(source, destination, 60), transfer(source, destination, 60)),
    )
    info = error_info(error)
    assert info is not None and info.metadata["index"] == "1"
    assert transaction_count(database_url, user.subject) == before
    assert await user.balance(source) == 100
    # Each movement with its own permissions: a user cannot credit, even in a batch.
    error = await expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_SCOPE",
        batch(user, debit(source, 1), credit(source, 5)),
    )
    assert error_info(error).metadata["index"] == "1"  # type: ignore[union-attr]
    # Nor move money out of someone else's wallet.
    error = await expect_error(
        grpc.StatusCode.NOT_FOUND,
        "WALLET_NOT_FOUND",
        batch(user, debit(source, 1), debit(destination, 1)),
    )
    assert error_info(error).metadata["index"] == "1"  # type: ignore[union-attr]
    await expect_error(INVALID, "INVALID_BATCH", batch(user))
    await expect_error(INVALID, "INVALID_BATCH", batch(user, *[debit(source, 1)] * 101))
    await expect_error(INVALID, "INVALID_BATCH", batch(user, wallet_pb2.BatchMovement()))
    error = await expect_error(
        INVALID, "INVALID_AMOUNT", batch(user, debit(source, 1), debit(source, 0))
    )
    assert error_info(error).metadata["index"] == "1"  # type: ignore[union-attr]
    assert await user.balance(source) == 100


async def test_a_refused_batch_changes_nothing_while_other_movements_run(
    user: Caller, other_user: Caller, payments: Caller, database_url: str
) -> None:
    source = await funded(user, payments, 1_000)
    destination = (await other_user.create_wallet()).id
    calls = []
    for _ in range(30):
        # Always refused: the second leg asks for more than the wallet can ever hold.
        calls.append(outcome(batch(user, transfer(source, destination, 1), debit(source, 10_000))))
        calls.append(outcome(user.debit(source, 10)))
        calls.append(outcome(payments.credit(source, 10)))
    outcomes = collections.Counter(await asyncio.gather(*calls))
    assert outcomes == {"OK": 60, "FAILED_PRECONDITION INSUFFICIENT_FUNDS": 30}
    assert await user.balance(source) == 1_000
    assert await other_user.balance(destination) == 0
    await assert_invariants_hold(database_url)


async def test_batches_touching_the_same_wallets_in_opposite_orders_never_deadlock(
    auth_channel: grpc.aio.Channel,
    wallet_channel: grpc.aio.Channel,
    wallet_settings: WalletSettings,
    payments: Caller,
    admin: Caller,
    database_url: str,
) -> None:
    owners = [await new_user(auth_channel, wallet_channel) for _ in range(4)]
    wallets = [await funded(owner, payments, 10_000) for owner in owners]

    def ring(order: list[str]) -> list[wallet_pb2.BatchMovement]:
        return [transfer(order[i], order[(i + 1) % len(order)], 1 + i) for i in range(len(order))]

    # Two instances, each sent both orders: one process never runs two transactions on the
    # same wallet at once, so only the lock order in the database keeps two from deadlocking.
    deadlocks_before = deadlocks(database_url)
    second = await start_wallet(wallet_settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            admin_there = Caller(WalletServiceStub(channel), admin.token, admin.subject)
            calls = [
                outcome(
                    batch(
                        (admin, admin_there)[i % 2],
                        *ring(wallets if i // 2 % 2 == 0 else wallets[::-1]),
                    )
                )
                for i in range(40)
            ]
            assert collections.Counter(await asyncio.gather(*calls)) == {"OK": 40}
    finally:
        await second.stop(grace=0)
    # The engine would retry a deadlock victim: all OK alone does not prove there was none.
    await asyncio.sleep(2)  # the services' backends report their statistics when idle (1 s)
    assert deadlocks(database_url) == deadlocks_before
    balances = [await owner.balance(wallet) for owner, wallet in zip(owners, wallets, strict=True)]
    assert sum(balances) == 40_000
    await assert_invariants_hold(database_url)


def deadlocks(database_url: str) -> int:
    """Deadlocks PostgreSQL has detected in this database (its statistics lag by up to a
    moment: the server flushes them at a transaction's end, so read them after the calls)."""
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_late_retry_of_a_batch_replays_it_from_the_ledger(
    user: Caller, other_user: Caller, payments: Caller, database_url: str
) -> None:
    source = await funded(user, payments, 1_000)
    destination = (await other_user.create_wallet()).id
    movements = (transfer(source, destination, 100), debit(source, 50))
    first = await batch(user, *movements, key="late-batch")
    await forget_keys_of(database_url, user.subject)
    assert await batch(user, *movements, key="late-batch") == first
    await expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
        batch(user, transfer(source, destination, 100), key="late-batch"),
    )
    # A key used by a batch cannot be used by a single movement either.
    await expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
        user.debit(source, 50, "late-batch"),
    )
    assert await user.balance(source) == 850


# --- metadata ------------------------------------------------------------------------------


async def test_metadata_is_kept_shown_to_its_requester_and_filters_history(
    user: Caller, other_user: Caller, payments: Caller
) -> None:
    source = await funded(user, payments, 1_000)
    destination = (await other_user.create_wallet()).id
    for order in ("A-1", "A-2", "A-1"):
        await user.call(
            "Transfer",
            wallet_pb2.TransferRequest(
                source_wallet_id=source,
                destination_wallet_id=destination,
                amount=10,
                idempotency_key=new_key(),
                metadata={"order": order, "team": "checkout"},
            ),
        )
    history = await user.call(
        "ListTransactions",
        wallet_pb2.ListTransactionsRequest(
            wallet_id=source, metadata_key="order", metadata_value="A-1"
        ),
    )
    assert [e.transaction.metadata["order"] for e in history.entries] == ["A-1", "A-1"]
    # The recipient sees neither the metadata nor, by filtering on it, that it exists.
    theirs = await other_user.call(
        "ListTransactions", wallet_pb2.ListTransactionsRequest(wallet_id=destination)
    )
    assert [dict(e.transaction.metadata) for e in theirs.entries] == [{}, {}, {}]
    probed = await other_user.call(
        "ListTransactions",
        wallet_pb2.ListTransactionsRequest(
            wallet_id=destination, metadata_key="order", metadata_value="A-1"
        ),
    )
    assert list(probed.entries) == []
    # Part of what the key is bound to.
    key = new_key()
    request = wallet_pb2.DebitRequest(
        wallet_id=source, amount=1, idempotency_key=key, metadata={"a": "1"}
    )
    await user.call("Debit", request)
    request.metadata["a"] = "2"
    await expect_error(
        grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED", user.call("Debit", request)
    )


async def test_wallets_and_holds_carry_metadata(user: Caller, payments: Caller) -> None:
    created = await user.call(
        "CreateWallet",
        wallet_pb2.CreateWalletRequest(currency="JPY", metadata={"purpose": "travel"}),
    )
    assert created.wallet.metadata == {"purpose": "travel"}
    await payments.credit(created.wallet.id, 1000)
    hold = await user.call(
        "CreateHold",
        wallet_pb2.CreateHoldRequest(
            wallet_id=created.wallet.id,
            amount=10,
            idempotency_key=new_key(),
            metadata={"ride": "7"},
        ),
    )
    assert hold.hold.metadata == {"ride": "7"}
    got = await user.call("GetHold", wallet_pb2.GetHoldRequest(hold_id=hold.hold.id))
    assert got.hold.metadata == {"ride": "7"}


async def test_metadata_limits(user: Caller, payments: Caller) -> None:
    wallet_id = await funded(user, payments, 100)
    for bad in (
        {f"k{i}": "v" for i in range(33)},
        {"": "empty key"},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"k": "line\nbreak"},
    ):
        await expect_error(
            INVALID,
            "INVALID_METADATA",
            user.call(
                "Debit",
                wallet_pb2.DebitRequest(
                    wallet_id=wallet_id, amount=1, idempotency_key=new_key(), metadata=bad
                ),
            ),
        )
    ok = {f"k{i}": "v" * 512 for i in range(32)}
    done = await user.call(
        "Debit",
        wallet_pb2.DebitRequest(
            wallet_id=wallet_id, amount=1, idempotency_key=new_key(), metadata=ok
        ),
    )
    assert done.transaction.metadata == ok
