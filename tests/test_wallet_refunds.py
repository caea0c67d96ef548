"""Refunds and reversals: money back the way it came, never more than the original, exactly
once per key (the failures of blnk #152 and #374 are tests here)."""

import asyncio
import collections

import grpc

from shared.gen.wallet.v1 import wallet_pb2
from tests.test_wallet_concurrency import assert_invariants_hold, outcome
from tests.test_wallet_holds import funded
from tests.wallet_helpers import Caller, expect_error, new_key

PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND


async def paid_transfer(
    payer: Caller, payee: Caller, payments: Caller, funds: int, amount: int
) -> tuple[str, str, wallet_pb2.Transaction]:
    """The payer's funded wallet, the payee's wallet, and a transfer between them."""
    source = await funded(payer, payments, funds)
    destination = (await payee.create_wallet()).id
    return source, destination, (await payer.transfer(source, destination, amount)).transaction


async def original(caller: Caller, transaction_id: str) -> wallet_pb2.Transaction:
    request = wallet_pb2.GetTransactionRequest(transaction_id=transaction_id)
    return (await caller.call("GetTransaction", request)).transaction


async def test_a_transfer_is_refunded_by_its_recipient_in_parts(
    user: Caller, other_user: Caller, payments: Caller, database_url: str
) -> None:
    source, destination, paid = await paid_transfer(user, other_user, payments, 1000, 300)

    refunded = await other_user.refund(paid.id, 100, "refund-1")
    refund = refunded.refund
    assert (refund.type, refund.amount, refund.refunded_transaction_id) == (
        wallet_pb2.TRANSACTION_TYPE_REFUND,
        100,
        paid.id,
    )
    assert (refund.source_wallet_id, refund.destination_wallet_id) == (destination, source)
    assert refunded.original.refunded_amount == 100
    assert refunded.source_balance_after == 200  # the recipient's own wallet
    assert not refunded.HasField("destination_balance_after")  # the payer's is not its to see
    rest = await other_user.refund(paid.id)  # 0: all that is left
    assert rest.refund.amount == 200 and rest.original.refunded_amount == 300
    assert (await original(user, paid.id)).refunded_amount == 300
    assert await user.balance(source) == 1000
    assert await other_user.balance(destination) == 0
    await expect_error(PRECONDITION, "REFUND_EXCEEDS_REMAINING", other_user.refund(paid.id, 1))
    await assert_invariants_hold(database_url)


async def test_who_may_refund_a_transfer(
    user: Caller, other_user: Caller, payments: Caller, admin: Caller
) -> None:
    _source, _destination, paid = await paid_transfer(user, other_user, payments, 1000, 300)
    # The payer sees it but cannot take the money back; a stranger does not see it at all.
    await expect_error(DENIED, "REFUND_NOT_PERMITTED", user.refund(paid.id, 10))
    await expect_error(NOT_FOUND, "TRANSACTION_NOT_FOUND", payments.refund(paid.id, 10))
    assert (await admin.refund(paid.id, 10)).refund.amount == 10


async def test_a_debit_is_refunded_and_a_credit_reversed_by_the_payments_service(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments, 500)
    debit = (await user.debit(wallet_id, 200)).transaction
    await expect_error(DENIED, "MISSING_SCOPE", user.refund(debit.id, 50))
    back = await payments.refund(debit.id, 50)
    assert (back.refund.source_wallet_id, back.refund.destination_wallet_id) == ("", wallet_id)
    assert await user.balance(wallet_id) == 350

    credit = (await payments.credit(wallet_id, 100)).transaction
    reversed_ = await payments.refund(credit.id)
    assert (reversed_.refund.source_wallet_id, reversed_.refund.destination_wallet_id) == (
        wallet_id,
        "",
    )
    assert await user.balance(wallet_id) == 350
    await assert_invariants_hold(database_url)


async def test_a_refund_needs_the_payers_funds_and_is_not_refundable_itself(
    user: Caller, other_user: Caller, payments: Caller
) -> None:
    _source, destination, paid = await paid_transfer(user, other_user, payments, 500, 300)
    await other_user.debit(destination, 250)  # the recipient spent most of it
    await expect_error(PRECONDITION, "INSUFFICIENT_FUNDS", other_user.refund(paid.id, 100))
    refund = (await other_user.refund(paid.id, 50)).refund
    await expect_error(PRECONDITION, "NOT_REFUNDABLE", user.refund(refund.id))
    # A credit's reversal needs the money too (and never touches a live hold's share).
    wallet_id = (await user.create_wallet("USD")).id
    credit = (await payments.credit(wallet_id, 100)).transaction
    await user.create_hold(wallet_id, 80)
    await expect_error(PRECONDITION, "INSUFFICIENT_FUNDS", payments.refund(credit.id, 30))


async def test_a_capture_is_refunded_like_a_transfer_or_a_debit(
    user: Caller, other_user: Caller, payments: Caller, checkout: Caller, database_url: str
) -> None:
    buyer = await funded(user, payments, 500)
    merchant = (await other_user.create_wallet()).id
    to_merchant = (await checkout.create_hold(buyer, 200, destination=merchant)).hold
    captured = (await checkout.capture(to_merchant.id)).transaction
    assert (await other_user.refund(captured.id, 200)).refund.destination_wallet_id == buyer
    debit_like = (await user.create_hold(buyer, 100)).hold
    spent = (await user.capture(debit_like.id)).transaction
    assert (await payments.refund(spent.id)).refund.destination_wallet_id == buyer
    assert await user.balance(buyer) == 500
    refunds = await user.call(
        "ListTransactions",
        wallet_pb2.ListTransactionsRequest(
            wallet_id=buyer, type=wallet_pb2.TRANSACTION_TYPE_REFUND
        ),
    )
    assert {e.transaction.refunded_transaction_id for e in refunds.entries} == {
        captured.id,
        spent.id,
    }
    await assert_invariants_hold(database_url)


async def test_20_concurrent_partial_refunds_never_exceed_the_original(
    user: Caller, other_user: Caller, payments: Caller, database_url: str
) -> None:
    _source, destination, paid = await paid_transfer(user, other_user, payments, 1000, 500)
    await payments.credit(destination, 1000)  # funds are not what stops a 17th refund
    outcomes = collections.Counter(
        await asyncio.gather(*(outcome(other_user.refund(paid.id, 30)) for _ in range(20)))
    )
    assert outcomes == {"OK": 16, "FAILED_PRECONDITION REFUND_EXCEEDS_REMAINING": 4}
    assert (await original(user, paid.id)).refunded_amount == 480
    assert await other_user.balance(destination) == 1020
    await assert_invariants_hold(database_url)


async def test_one_refund_key_sent_30_times_at_once_applies_once_with_one_answer(
    user: Caller, other_user: Caller, payments: Caller, database_url: str
) -> None:
    _source, destination, paid = await paid_transfer(user, other_user, payments, 1000, 500)
    key = new_key()
    answers = await asyncio.gather(*(other_user.refund(paid.id, 100, key) for _ in range(30)))
    assert all(answer == answers[0] for answer in answers)
    assert answers[0].original.refunded_amount == 100
    assert await other_user.balance(destination) == 400
    # A different request with the key is refused, not applied (blnk #374).
    await expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
        other_user.refund(paid.id, 99, key),
    )
    assert await other_user.balance(destination) == 400
    await assert_invariants_hold(database_url)
