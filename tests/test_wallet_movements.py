"""Credit, Debit, Transfer, idempotency and who may move what."""

import uuid
from typing import Any

import grpc
import psycopg
import pytest

from shared.errors import error_info
from shared.gen.wallet.v1 import wallet_pb2
from tests.wallet_helpers import (
    Caller,
    expect_error,
    idempotency_keys_of,
    insert_aged_idempotency_key,
    new_key,
)
from wallet_service.admin import clean_idempotency_keys

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND
INT64_MAX = 2**63 - 1


async def funded_wallet(owner: Caller, payments: Caller, amount: int, currency: str = "EUR") -> str:
    wallet = await owner.create_wallet(currency)
    if amount:
        await payments.credit(wallet.id, amount)
    return str(wallet.id)


# --- credit --------------------------------------------------------------------------------


async def test_credit_adds_money_and_returns_the_transaction_and_balance(
    user: Caller, payments: Caller
) -> None:
    wallet = await user.create_wallet()
    response = await payments.call(
        "Credit",
        wallet_pb2.CreditRequest(
            wallet_id=wallet.id, amount=1250, idempotency_key="deposit-1", reference="order 7"
        ),
    )
    transaction = response.transaction
    assert transaction.type == wallet_pb2.TRANSACTION_TYPE_CREDIT
    assert transaction.amount == 1250 and transaction.currency == "EUR"
    assert transaction.destination_wallet_id == wallet.id
    assert transaction.source_wallet_id == ""
    assert transaction.idempotency_key == "deposit-1"
    assert transaction.reference == "order 7"
    assert transaction.create_time.seconds > 0
    assert await user.balance(wallet.id) == 1250


async def test_a_crediting_service_is_not_told_the_balance_but_an_admin_is(
    user: Caller, payments: Caller, admin: Caller
) -> None:
    wallet_id = await funded_wallet(user, payments, 100)
    assert (await payments.credit(wallet_id, 50)).balance_after == 0
    assert (await admin.credit(wallet_id, 25)).balance_after == 175
    assert await user.balance(wallet_id) == 175


async def test_crediting_needs_the_credit_scope(user: Caller, admin: Caller) -> None:
    wallet = await user.create_wallet()
    await expect_error(
        grpc.StatusCode.PERMISSION_DENIED, "MISSING_SCOPE", user.credit(wallet.id, 100)
    )
    assert await user.balance(wallet.id) == 0
    await admin.credit(wallet.id, 100)  # wallet:admin may act on any wallet
    assert await user.balance(wallet.id) == 100


@pytest.mark.parametrize("amount", [0, -1, -(2**63)])
async def test_amounts_must_be_positive(user: Caller, payments: Caller, amount: int) -> None:
    wallet_id = await funded_wallet(user, payments, 10)
    await expect_error(INVALID, "INVALID_AMOUNT", payments.credit(wallet_id, amount))
    await expect_error(INVALID, "INVALID_AMOUNT", user.debit(wallet_id, amount))
    other = (await user.create_wallet("USD")).id
    await expect_error(INVALID, "INVALID_AMOUNT", user.transfer(wallet_id, other, amount))


async def test_idempotency_key_is_required_and_bounded(user: Caller, payments: Caller) -> None:
    wallet_id = await funded_wallet(user, payments, 10)
    for key in ("", "k" * 129, "tab\tinside"):
        await expect_error(
            INVALID,
            "INVALID_IDEMPOTENCY_KEY",
            user.call(
                "Debit", wallet_pb2.DebitRequest(wallet_id=wallet_id, amount=1, idempotency_key=key)
            ),
        )
    await user.debit(wallet_id, 1, key="k" * 128)
    assert await user.balance(wallet_id) == 9


@pytest.mark.parametrize("reference", ["r" * 257, "nul\x00inside", "line\nbreak"])
async def test_reference_is_bounded_and_printable(
    user: Caller, payments: Caller, reference: str
) -> None:
    wallet = await user.create_wallet()
    await expect_error(
        INVALID,
        "INVALID_REFERENCE",
        payments.call(
            "Credit",
            wallet_pb2.CreditRequest(
                wallet_id=wallet.id, amount=1, idempotency_key=new_key(), reference=reference
            ),
        ),
    )
    assert await user.balance(wallet.id) == 0


async def test_credit_to_a_missing_wallet_is_not_found(payments: Caller) -> None:
    await expect_error(NOT_FOUND, "WALLET_NOT_FOUND", payments.credit(str(uuid.uuid4()), 5))


async def test_a_balance_cannot_overflow(user: Caller, payments: Caller) -> None:
    wallet_id = await funded_wallet(user, payments, INT64_MAX)
    await expect_error(PRECONDITION, "BALANCE_OVERFLOW", payments.credit(wallet_id, 1))
    assert await user.balance(wallet_id) == INT64_MAX


# --- debit ---------------------------------------------------------------------------------


async def test_debit_takes_money_from_the_owners_wallet(user: Caller, payments: Caller) -> None:
    wallet_id = await funded_wallet(user, payments, 500)
    response = await user.debit(wallet_id, 200)
    assert response.balance_after == 300
    assert response.transaction.type == wallet_pb2.TRANSACTION_TYPE_DEBIT
    assert response.transaction.source_wallet_id == wallet_id
    assert await user.balance(wallet_id) == 300


async def test_debit_more_than_balance_is_refused_and_changes_nothing(
    user: Caller, payments: Caller
) -> None:
    wallet_id = await funded_wallet(user, payments, 100)
    await expect_error(PRECONDITION, "INSUFFICIENT_FUNDS", user.debit(wallet_id, 101))
    assert await user.balance(wallet_id) == 100
    response = await user.debit(wallet_id, 100)
    assert response.balance_after == 0


async def test_nobody_debits_another_users_wallet(
    user: Caller, other_user: Caller, payments: Caller
) -> None:
    wallet_id = await funded_wallet(user, payments, 100)
    await expect_error(NOT_FOUND, "WALLET_NOT_FOUND", other_user.debit(wallet_id, 1))
    # The credit scope does not allow taking money out.
    await expect_error(NOT_FOUND, "WALLET_NOT_FOUND", payments.debit(wallet_id, 1))
    assert await user.balance(wallet_id) == 100


async def test_admin_may_debit_any_wallet(user: Caller, payments: Caller, admin: Caller) -> None:
    wallet_id = await funded_wallet(user, payments, 100)
    assert (await admin.debit(wallet_id, 40)).balance_after == 60


# --- transfer ------------------------------------------------------------------------------


async def test_transfer_between_currencies_is_refused(user: Caller, payments: Caller) -> None:
    source = await funded_wallet(user, payments, 1000, "EUR")
    destination = (await user.create_wallet("USD")).id
    await expect_error(PRECONDITION, "CURRENCY_MISMATCH", user.transfer(source, destination, 10))


async def test_transfer_to_another_user(user: Caller, other_user: Caller, payments: Caller) -> None:
    source = await funded_wallet(user, payments, 1000)
    destination = await funded_wallet(other_user, payments, 50)
    response = await user.transfer(source, destination, 300)
    transaction = response.transaction
    assert transaction.type == wallet_pb2.TRANSACTION_TYPE_TRANSFER
    assert (transaction.source_wallet_id, transaction.destination_wallet_id) == (
        source,
        destination,
    )
    assert response.source_balance_after == 700
    # Another user's balance is never disclosed to the sender.
    assert not response.HasField("destination_balance_after")
    assert await user.balance(source) == 700
    assert await other_user.balance(destination) == 350


async def test_transfer_between_own_wallets_reports_both_balances(
    user: Caller, payments: Caller, admin: Caller
) -> None:
    source = await funded_wallet(user, payments, 1000)
    destination = await funded_wallet(admin, payments, 0)
    response = await admin.transfer(source, destination, 250)  # admin: any wallet
    assert response.source_balance_after == 750
    assert response.destination_balance_after == 250


async def test_transfer_refusals(user: Caller, other_user: Caller, payments: Caller) -> None:
    source = await funded_wallet(user, payments, 100)
    destination = await funded_wallet(other_user, payments, 0)
    await expect_error(INVALID, "SAME_WALLET", user.transfer(source, source, 1))
    await expect_error(PRECONDITION, "INSUFFICIENT_FUNDS", user.transfer(source, destination, 101))
    await expect_error(NOT_FOUND, "WALLET_NOT_FOUND", user.transfer(source, str(uuid.uuid4()), 1))
    await expect_error(NOT_FOUND, "WALLET_NOT_FOUND", other_user.transfer(source, destination, 1))
    await expect_error(
        INVALID,
        "INVALID_WALLET_ID",
        user.call(
            "Transfer",
            wallet_pb2.TransferRequest(
                source_wallet_id=source,
                destination_wallet_id="nope",
                amount=1,
                idempotency_key=new_key(),
            ),
        ),
    )
    assert await user.balance(source) == 100
    assert await other_user.balance(destination) == 0


async def test_a_transfer_tells_neither_side_what_belongs_to_the_other(
    user: Caller, other_user: Caller, payments: Caller
) -> None:
    """Issue 8, finding 10: the funds are checked before the currencies, so a refusal does not
    tell an empty wallet's owner another user's currency; and each side of a transfer sees only
    its own request's key and reference."""
    empty = (await user.create_wallet("EUR")).id
    dollars = (await other_user.create_wallet("USD")).id
    await expect_error(PRECONDITION, "INSUFFICIENT_FUNDS", user.transfer(empty, dollars, 10))
    mismatch = await expect_error(
        PRECONDITION, "CURRENCY_MISMATCH", transfer_once_funded(user, payments, empty, dollars)
    )
    assert "USD" not in str(mismatch.details()) and "USD" not in str(mismatch.trailing_metadata())

    source = empty  # it holds the 10 now
    destination = (await other_user.create_wallet("EUR")).id
    request = wallet_pb2.TransferRequest(
        source_wallet_id=source,
        destination_wallet_id=destination,
        amount=10,
        idempotency_key="order-7-key",
        reference="order 7",
    )
    await user.call("Transfer", request)
    mine = await user.call("ListTransactions", wallet_pb2.ListTransactionsRequest(wallet_id=source))
    theirs = await other_user.call(
        "ListTransactions", wallet_pb2.ListTransactionsRequest(wallet_id=destination)
    )
    sent, received = mine.entries[0].transaction, theirs.entries[0].transaction
    assert (sent.idempotency_key, sent.reference) == ("order-7-key", "order 7")
    assert received.id == sent.id
    assert (received.idempotency_key, received.reference) == ("", "")


async def transfer_once_funded(user: Caller, payments: Caller, source: str, to: str) -> Any:
    """A transfer of 10 out of `source` once it holds the funds."""
    await payments.credit(source, 10)
    return await user.transfer(source, to, 10)


# --- idempotency ---------------------------------------------------------------------------


async def test_a_retried_debit_is_applied_once_and_answers_the_same(
    user: Caller, payments: Caller
) -> None:
    wallet_id = await funded_wallet(user, payments, 100)
    first = await user.debit(wallet_id, 30, key="pay-42")
    await user.debit(wallet_id, 5)  # something else happens in between
    again = await user.debit(wallet_id, 30, key="pay-42")
    assert again.transaction == first.transaction
    assert again.balance_after == first.balance_after == 70
    assert await user.balance(wallet_id) == 65


async def test_a_key_reused_for_another_request_is_refused(user: Caller, payments: Caller) -> None:
    wallet_id = await funded_wallet(user, payments, 100)
    await user.debit(wallet_id, 30, key="pay-43")
    await expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
        user.debit(wallet_id, 31, key="pay-43"),
    )
    other_wallet = await funded_wallet(user, payments, 100, "USD")
    await expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
        user.debit(other_wallet, 30, key="pay-43"),
    )
    assert await user.balance(wallet_id) == 70
    assert await user.balance(other_wallet) == 100


async def test_keys_are_scoped_to_the_caller(
    user: Caller, other_user: Caller, payments: Caller
) -> None:
    first = await funded_wallet(user, payments, 100)
    second = await funded_wallet(other_user, payments, 100)
    one = await user.debit(first, 10, key="shared-key")
    two = await other_user.debit(second, 10, key="shared-key")
    assert one.transaction.id != two.transaction.id
    assert await user.balance(first) == 90
    assert await other_user.balance(second) == 90


async def test_the_first_outcome_of_a_key_is_final_even_a_refusal(
    user: Caller, payments: Caller
) -> None:
    wallet_id = await funded_wallet(user, payments, 10)
    first = await expect_error(
        PRECONDITION, "INSUFFICIENT_FUNDS", user.debit(wallet_id, 50, key="k-50")
    )
    await payments.credit(wallet_id, 100)
    again = await expect_error(
        PRECONDITION, "INSUFFICIENT_FUNDS", user.debit(wallet_id, 50, key="k-50")
    )
    assert again.details() == first.details()
    assert error_info(again) == error_info(first)  # metadata included
    assert error_info(again).metadata["wallet_id"] == wallet_id  # type: ignore[union-attr]
    assert await user.balance(wallet_id) == 110


async def test_a_rejected_request_does_not_burn_its_key(user: Caller, payments: Caller) -> None:
    wallet_id = await funded_wallet(user, payments, 10)
    await expect_error(
        NOT_FOUND, "WALLET_NOT_FOUND", user.debit(str(uuid.uuid4()), 5, key="k-typo")
    )
    # Not found is not an outcome: the same key works for the corrected request.
    await user.debit(wallet_id, 5, key="k-typo")
    assert await user.balance(wallet_id) == 5


# --- the ledger itself ---------------------------------------------------------------------


async def test_ledger_rows_cannot_be_changed(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for statement in (
            "UPDATE wallet.ledger_entries SET amount = amount + 1",
            "DELETE FROM wallet.transactions",
            "TRUNCATE wallet.ledger_entries CASCADE",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
            conn.rollback()


async def test_the_database_refuses_a_negative_balance(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO wallet.wallets (user_id, currency) VALUES ('db-test', 'CHF')")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE wallet.wallets SET balance = -1 WHERE user_id = 'db-test'")


async def test_cleanup_removes_only_keys_older_than_the_retention(database_url: str) -> None:
    for key, age_hours in (("old-key", 25), ("young-key", 23)):
        insert_aged_idempotency_key(database_url, "cleanup-test", key, age_hours)
    assert await clean_idempotency_keys(database_url, retention_hours=24) >= 1
    assert idempotency_keys_of(database_url, "cleanup-test") == ["young-key"]
