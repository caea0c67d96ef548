"""The ledger's own guarantees: a succeeded key is unique forever, and each wallet numbers its
entries 1, 2, 3, ... with no gap, whatever runs concurrently."""

import asyncio

import grpc
import psycopg
import pytest

from shared.gen.wallet.v1 import wallet_pb2
from tests.wallet_helpers import Caller, expect_error, new_key
from wallet_service.admin import check_invariants, clean_idempotency_keys


def age_idempotency_records(database_url: str, principal: str, hours: float) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE wallet.idempotency_keys SET created_at = now() - make_interval(hours => %s)"
            " WHERE principal = %s",
            (hours, principal),
        )


async def forget_keys_of(database_url: str, principal: str) -> None:
    """What the retention clean-up does to a caller's records a day later."""
    age_idempotency_records(database_url, principal, 25)
    await clean_idempotency_keys(database_url, 24)


async def test_a_retry_after_the_record_is_cleaned_up_replays_from_the_ledger(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = (await user.create_wallet()).id
    await payments.credit(wallet_id, 100)
    key = new_key()
    first = await user.debit(wallet_id, 30, key)
    await user.debit(wallet_id, 5)
    await forget_keys_of(database_url, user.subject)

    again = await user.debit(wallet_id, 30, key)
    assert again.transaction == first.transaction
    assert again.balance_after == first.balance_after == 70
    assert await user.balance(wallet_id) == 65  # nothing moved twice
    # Still bound to its request, too.
    await expect_error(
        grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED", user.debit(wallet_id, 31, key)
    )
    ok, report = await check_invariants(database_url)
    assert ok, report


async def test_concurrent_late_retries_of_a_forgotten_key_apply_nothing(
    user: Caller, other_user: Caller, payments: Caller, database_url: str
) -> None:
    source = (await user.create_wallet()).id
    destination = (await other_user.create_wallet()).id
    await payments.credit(source, 1000)
    key = new_key()
    first = await user.transfer(source, destination, 100, key)
    await forget_keys_of(database_url, user.subject)
    answers = await asyncio.gather(
        *(user.transfer(source, destination, 100, key) for _ in range(20))
    )
    assert {answer.transaction.id for answer in answers} == {first.transaction.id}
    assert {answer.source_balance_after for answer in answers} == {900}
    assert await user.balance(source) == 900


async def test_the_ledger_itself_refuses_a_second_transaction_with_a_key(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = (await user.create_wallet()).id
    credited = await payments.credit(wallet_id, 100, "the-only-one")
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "INSERT INTO wallet.transactions (id, type, amount, currency,"
            " destination_wallet_id, idempotency_key, requested_by)"
            " SELECT gen_random_uuid(), type, amount, currency, destination_wallet_id,"
            " idempotency_key, requested_by FROM wallet.transactions WHERE id = %s",
            (credited.transaction.id,),
        )


async def test_each_wallet_numbers_its_entries_without_gaps_under_concurrency(
    user: Caller, other_user: Caller, payments: Caller, database_url: str
) -> None:
    hot = (await user.create_wallet()).id
    other = (await other_user.create_wallet()).id
    await payments.credit(hot, 500)
    await payments.credit(other, 500)
    calls = []
    for index in range(40):
        calls.append(payments.credit(hot, 1 + index))
        calls.append(user.debit(hot, 1))
        calls.append(user.transfer(hot, other, 2))
        calls.append(other_user.transfer(other, hot, 3))
    await asyncio.gather(*calls)

    sequences = []
    token = ""
    while True:
        page = await user.call(
            "ListTransactions",
            wallet_pb2.ListTransactionsRequest(wallet_id=hot, page_size=37, page_token=token),
        )
        sequences.extend(entry.sequence for entry in page.entries)
        token = page.next_page_token
        if not token:
            break
    assert sequences == list(range(161, 0, -1))  # 1 credit first, then 160 movements
    ok, report = await check_invariants(database_url)
    assert ok, report
