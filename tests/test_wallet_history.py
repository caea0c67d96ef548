"""GetTransaction and ListTransactions: visibility, order, stable cursors, filters."""

import uuid
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from shared.gen.wallet.v1 import wallet_pb2
from shared.timestamps import to_timestamp as ts
from tests.wallet_helpers import Caller, expect_error
from wallet_service import page_tokens

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def history(
    caller: Caller, wallet_id: str, **filters: object
) -> list[wallet_pb2.LedgerEntry]:
    """Every entry, page by page (page_size 2 to exercise the cursor)."""
    entries: list[wallet_pb2.LedgerEntry] = []
    token = ""
    while True:
        page = await caller.call(
            "ListTransactions",
            wallet_pb2.ListTransactionsRequest(
                wallet_id=wallet_id, page_size=2, page_token=token, **filters
            ),
        )
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries


async def test_get_transaction_is_visible_to_both_sides_of_a_transfer(
    user: Caller, other_user: Caller, payments: Caller
) -> None:
    source = (await user.create_wallet()).id
    await payments.credit(source, 100)
    destination = (await other_user.create_wallet()).id
    moved = await user.call(
        "Transfer",
        wallet_pb2.TransferRequest(
            source_wallet_id=source,
            destination_wallet_id=destination,
            amount=40,
            idempotency_key="rent-share",
            reference="my note",
        ),
    )
    request = wallet_pb2.GetTransactionRequest(transaction_id=moved.transaction.id)
    assert (await user.call("GetTransaction", request)).transaction == moved.transaction
    # The recipient sees the movement, not the sender's idempotency key or note.
    seen_by_recipient = (await other_user.call("GetTransaction", request)).transaction
    assert (seen_by_recipient.idempotency_key, seen_by_recipient.reference) == ("", "")
    seen_by_recipient.idempotency_key, seen_by_recipient.reference = "rent-share", "my note"
    assert seen_by_recipient == moved.transaction
    (entry,) = (
        await other_user.call(
            "ListTransactions", wallet_pb2.ListTransactionsRequest(wallet_id=destination)
        )
    ).entries
    assert (entry.transaction.idempotency_key, entry.transaction.reference) == ("", "")


async def test_a_stranger_cannot_read_a_transaction(
    user: Caller, other_user: Caller, payments: Caller
) -> None:
    wallet_id = (await user.create_wallet()).id
    credited = await payments.credit(wallet_id, 100)
    request = wallet_pb2.GetTransactionRequest(transaction_id=credited.transaction.id)
    await expect_error(
        grpc.StatusCode.NOT_FOUND,
        "TRANSACTION_NOT_FOUND",
        other_user.call("GetTransaction", request),
    )
    await expect_error(
        grpc.StatusCode.NOT_FOUND,
        "TRANSACTION_NOT_FOUND",
        user.call(
            "GetTransaction", wallet_pb2.GetTransactionRequest(transaction_id=str(uuid.uuid4()))
        ),
    )
    await expect_error(
        INVALID,
        "INVALID_TRANSACTION_ID",
        user.call("GetTransaction", wallet_pb2.GetTransactionRequest(transaction_id="x")),
    )
    # The service that made the credit may read it back.
    assert (await payments.call("GetTransaction", request)).transaction == credited.transaction


async def test_history_is_newest_first_with_balance_after_each_entry(
    user: Caller, other_user: Caller, payments: Caller
) -> None:
    wallet_id = (await user.create_wallet()).id
    destination = (await other_user.create_wallet()).id
    await payments.credit(wallet_id, 100)
    await user.debit(wallet_id, 30)
    await user.transfer(wallet_id, destination, 20)
    entries = await history(user, wallet_id)
    assert [(entry.balance_change, entry.balance_after) for entry in entries] == [
        (-20, 50),
        (-30, 70),
        (100, 100),
    ]
    assert [entry.transaction.type for entry in entries] == [
        wallet_pb2.TRANSACTION_TYPE_TRANSFER,
        wallet_pb2.TRANSACTION_TYPE_DEBIT,
        wallet_pb2.TRANSACTION_TYPE_CREDIT,
    ]
    # The recipient's statement shows the same transfer as money in.
    received = await history(other_user, destination)
    assert [(entry.balance_change, entry.balance_after) for entry in received] == [(20, 20)]


async def test_the_cursor_neither_skips_nor_repeats_while_entries_arrive(
    user: Caller, payments: Caller
) -> None:
    wallet_id = (await user.create_wallet()).id
    for amount in range(1, 6):
        await payments.credit(wallet_id, amount)
    first = await user.call(
        "ListTransactions", wallet_pb2.ListTransactionsRequest(wallet_id=wallet_id, page_size=2)
    )
    for amount in range(100, 103):  # new entries land on top while the client pages
        await payments.credit(wallet_id, amount)
    seen = [entry.transaction.amount for entry in first.entries]
    token = first.next_page_token
    while token:
        page = await user.call(
            "ListTransactions",
            wallet_pb2.ListTransactionsRequest(wallet_id=wallet_id, page_size=2, page_token=token),
        )
        seen.extend(entry.transaction.amount for entry in page.entries)
        token = page.next_page_token
    assert seen == [5, 4, 3, 2, 1]


async def test_history_filters_by_type_and_time(user: Caller, payments: Caller) -> None:
    wallet_id = (await user.create_wallet()).id
    await payments.credit(wallet_id, 100)
    await user.debit(wallet_id, 10)
    await user.debit(wallet_id, 20)
    debits = await history(user, wallet_id, type=wallet_pb2.TRANSACTION_TYPE_DEBIT)
    assert [entry.transaction.amount for entry in debits] == [20, 10]

    now = datetime.now(UTC)
    assert len(await history(user, wallet_id, start_time=ts(now - timedelta(minutes=5)))) == 3
    assert await history(user, wallet_id, start_time=ts(now + timedelta(minutes=5))) == []
    assert await history(user, wallet_id, end_time=ts(now - timedelta(minutes=5))) == []


async def test_history_rejects_bad_requests(
    user: Caller, other_user: Caller, payments: Caller
) -> None:
    wallet_id = (await user.create_wallet()).id
    for amount in (1, 2, 3):
        await payments.credit(wallet_id, amount)
    now = datetime.now(UTC)
    await expect_error(
        INVALID,
        "INVALID_TIME_RANGE",
        user.call(
            "ListTransactions",
            wallet_pb2.ListTransactionsRequest(
                wallet_id=wallet_id, start_time=ts(now), end_time=ts(now - timedelta(seconds=1))
            ),
        ),
    )
    await expect_error(
        INVALID,
        "INVALID_TRANSACTION_TYPE",
        user.call(
            "ListTransactions", wallet_pb2.ListTransactionsRequest(wallet_id=wallet_id, type=99)
        ),
    )
    page = await user.call(
        "ListTransactions", wallet_pb2.ListTransactionsRequest(wallet_id=wallet_id, page_size=1)
    )
    # A token is bound to the filters it was issued for.
    await expect_error(
        INVALID,
        "INVALID_PAGE_TOKEN",
        user.call(
            "ListTransactions",
            wallet_pb2.ListTransactionsRequest(
                wallet_id=wallet_id,
                page_token=page.next_page_token,
                type=wallet_pb2.TRANSACTION_TYPE_DEBIT,
            ),
        ),
    )
    await expect_error(
        grpc.StatusCode.NOT_FOUND,
        "WALLET_NOT_FOUND",
        other_user.call(
            "ListTransactions", wallet_pb2.ListTransactionsRequest(wallet_id=wallet_id)
        ),
    )


async def test_out_of_range_times_are_invalid_arguments(user: Caller) -> None:
    wallet_id = (await user.create_wallet()).id
    for bad in (
        Timestamp(seconds=2**62),
        Timestamp(seconds=0, nanos=-5),
        Timestamp(seconds=-(2**40)),
    ):
        await expect_error(
            INVALID,
            "INVALID_TIME_RANGE",
            user.call(
                "ListTransactions",
                wallet_pb2.ListTransactionsRequest(wallet_id=wallet_id, start_time=bad),
            ),
        )


async def test_forged_page_tokens_are_invalid_arguments(user: Caller) -> None:
    """The token is unsigned, so a caller can build one with the right filter digest."""
    wallet_id = (await user.create_wallet()).id
    history_filters = [wallet_id, 0, None, None]
    for cursor in ([10**30], [True], [-1], ["1"], [1, 2]):
        await expect_error(
            INVALID,
            "INVALID_PAGE_TOKEN",
            user.call(
                "ListTransactions",
                wallet_pb2.ListTransactionsRequest(
                    wallet_id=wallet_id, page_token=page_tokens.encode(cursor, history_filters)
                ),
            ),
        )
    for cursor in (["2024-01-01T00:00:00+00:00", 5], ["yesterday", wallet_id], [1, 2, 3]):
        await expect_error(
            INVALID,
            "INVALID_PAGE_TOKEN",
            user.call(
                "ListWallets",
                wallet_pb2.ListWalletsRequest(
                    page_token=page_tokens.encode(cursor, ["wallets", user.subject])
                ),
            ),
        )
