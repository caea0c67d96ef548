"""Wallet status (ACTIVE, DEBITS_FROZEN, FROZEN, CLOSED) enforced on every movement and hold
RPC and recorded with who and why; and a wallet's balance at any past instant."""

import asyncio
import random
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp

from shared.gen.wallet.v1 import wallet_pb2
from tests.test_wallet_batches import batch, credit, debit
from tests.test_wallet_concurrency import assert_invariants_hold
from tests.test_wallet_holds import funded
from tests.wallet_helpers import Caller, expect_error

PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def set_status(
    admin: Caller, wallet_id: str, status: int, reason: str = "compliance"
) -> wallet_pb2.Wallet:
    response = await admin.call(
        "UpdateWalletStatus",
        wallet_pb2.UpdateWalletStatusRequest(wallet_id=wallet_id, status=status, reason=reason),
    )
    return response.wallet


async def test_a_status_change_is_recorded_with_who_and_why_and_shown_on_the_wallet(
    user: Caller, payments: Caller, admin: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments, 100)
    assert (await user.wallet(wallet_id)).status == wallet_pb2.WALLET_STATUS_ACTIVE
    changed = await set_status(admin, wallet_id, wallet_pb2.WALLET_STATUS_FROZEN, "case 42")
    assert (changed.status, changed.status_reason) == (wallet_pb2.WALLET_STATUS_FROZEN, "case 42")
    seen = await user.wallet(wallet_id)
    assert seen.status == wallet_pb2.WALLET_STATUS_FROZEN and seen.HasField("status_change_time")
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT old_status, new_status, reason, changed_by <> '' FROM wallet.wallet_status_changes"
            " WHERE wallet_id = %s",
            (wallet_id,),
        ).fetchall()
    assert rows == [("active", "frozen", "case 42", True)]


async def test_only_an_admin_changes_a_status_and_needs_a_reason(
    user: Caller, payments: Caller, admin: Caller
) -> None:
    wallet_id = await funded(user, payments, 100)
    for caller in (user, payments):
        await expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            "MISSING_SCOPE",
            set_status(caller, wallet_id, wallet_pb2.WALLET_STATUS_FROZEN),
        )
    await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REASON",
        set_status(admin, wallet_id, wallet_pb2.WALLET_STATUS_FROZEN, "  "),
    )
    await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_STATUS",
        set_status(admin, wallet_id, wallet_pb2.WALLET_STATUS_UNSPECIFIED),
    )


async def test_a_debits_frozen_wallet_takes_money_in_but_lets_none_out(
    user: Caller, other_user: Caller, payments: Caller, admin: Caller
) -> None:
    wallet_id = await funded(user, payments, 1000)
    other = await funded(other_user, payments, 1000)
    hold = (await user.create_hold(wallet_id, 100)).hold
    await set_status(admin, wallet_id, wallet_pb2.WALLET_STATUS_DEBITS_FROZEN)
    for refused in (
        user.debit(wallet_id, 1),
        user.transfer(wallet_id, other, 1),
        user.create_hold(wallet_id, 1),
        user.capture(hold.id),
        batch(user, debit(wallet_id, 1)),
    ):
        await expect_error(PRECONDITION, "WALLET_FROZEN", refused)
    # Money in is fine, and so is releasing a hold.
    await payments.credit(wallet_id, 10)
    paid = (await other_user.transfer(other, wallet_id, 20)).transaction
    await user.void(hold.id)
    # A refund that would take money out of it is refused; one into it is not.
    await expect_error(PRECONDITION, "WALLET_FROZEN", user.refund(paid.id, 5))
    assert (await user.wallet(wallet_id)).balance == 1030


async def test_a_frozen_wallet_refuses_everything_in_or_out_and_thawing_restores_it(
    user: Caller, other_user: Caller, payments: Caller, admin: Caller
) -> None:
    wallet_id = await funded(user, payments, 1000)
    other = await funded(other_user, payments, 1000)
    await set_status(admin, wallet_id, wallet_pb2.WALLET_STATUS_FROZEN)
    for refused in (
        payments.credit(wallet_id, 1),
        other_user.transfer(other, wallet_id, 1),
        user.debit(wallet_id, 1),
        other_user.create_hold(other, 1, destination=wallet_id),
        batch(payments, credit(wallet_id, 1)),
    ):
        await expect_error(PRECONDITION, "WALLET_FROZEN", refused)
    await set_status(admin, wallet_id, wallet_pb2.WALLET_STATUS_ACTIVE, "cleared")
    assert (await user.debit(wallet_id, 1)).balance_after == 999


async def test_closing_needs_an_empty_wallet_and_is_final(
    user: Caller, other_user: Caller, payments: Caller, admin: Caller
) -> None:
    wallet_id = await funded(user, payments, 100)
    other = await funded(other_user, payments, 100)
    await expect_error(
        PRECONDITION,
        "WALLET_NOT_EMPTY",
        set_status(admin, wallet_id, wallet_pb2.WALLET_STATUS_CLOSED),
    )
    await user.debit(wallet_id, 90)
    hold = (await user.create_hold(wallet_id, 10)).hold
    await user.capture(hold.id)
    closed = await set_status(admin, wallet_id, wallet_pb2.WALLET_STATUS_CLOSED, "customer left")
    assert closed.status == wallet_pb2.WALLET_STATUS_CLOSED
    await expect_error(PRECONDITION, "WALLET_CLOSED", payments.credit(wallet_id, 1))
    await expect_error(PRECONDITION, "WALLET_CLOSED", other_user.transfer(other, wallet_id, 1))
    await expect_error(
        PRECONDITION, "WALLET_CLOSED", set_status(admin, wallet_id, wallet_pb2.WALLET_STATUS_ACTIVE)
    )


async def test_a_wallet_with_a_live_hold_cannot_be_closed(
    user: Caller, payments: Caller, admin: Caller
) -> None:
    wallet_id = await funded(user, payments, 50)
    hold = (await user.create_hold(wallet_id, 50)).hold
    await user.capture(hold.id, 50)
    await payments.credit(wallet_id, 5)
    await user.create_hold(wallet_id, 5)
    await expect_error(
        PRECONDITION,
        "WALLET_NOT_EMPTY",
        set_status(admin, wallet_id, wallet_pb2.WALLET_STATUS_CLOSED),
    )


# --- balances in time ----------------------------------------------------------------------


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def balance_at(
    caller: Caller, wallet_id: str, moment: datetime
) -> wallet_pb2.GetBalanceAtResponse:
    return await caller.call(
        "GetBalanceAt", wallet_pb2.GetBalanceAtRequest(wallet_id=wallet_id, time=timestamp(moment))
    )


async def test_the_balance_at_an_instant_is_the_sum_of_the_entries_up_to_it(
    user: Caller, other_user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = (await user.create_wallet()).id
    other = await funded(other_user, payments, 100_000)
    before_anything = datetime.now(UTC)
    rng = random.Random(11)
    for _ in range(40):
        choice = rng.random()
        if choice < 0.4:
            await payments.credit(wallet_id, rng.randint(1, 500))
        elif choice < 0.7:
            await other_user.transfer(other, wallet_id, rng.randint(1, 300))
        else:
            balance = await user.balance(wallet_id)
            if balance:
                await user.debit(wallet_id, rng.randint(1, balance))
    await asyncio.sleep(0.05)
    with psycopg.connect(database_url) as conn:
        entries = conn.execute(
            "SELECT created_at, amount, sequence FROM wallet.ledger_entries WHERE wallet_id = %s"
            " ORDER BY sequence",
            (wallet_id,),
        ).fetchall()
    first, last = entries[0][0], entries[-1][0]
    instants = [first + (last - first) * rng.random() for _ in range(60)]
    instants += [created for created, _, _ in entries]  # exactly at an entry: it counts
    instants += [before_anything, last + timedelta(milliseconds=10)]
    for instant in instants:
        expected = sum(amount for created, amount, _ in entries if created <= instant)
        sequence = max((seq for created, _, seq in entries if created <= instant), default=0)
        answer = await balance_at(user, wallet_id, instant)
        assert (answer.balance, answer.sequence) == (expected, sequence), instant
    await assert_invariants_hold(database_url)


async def test_the_balance_at_needs_a_past_instant_and_the_wallets_reader(
    user: Caller, other_user: Caller, payments: Caller
) -> None:
    wallet_id = await funded(user, payments, 100)
    await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_TIME",
        balance_at(user, wallet_id, datetime.now(UTC) + timedelta(hours=1)),
    )
    await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_TIME",
        user.call("GetBalanceAt", wallet_pb2.GetBalanceAtRequest(wallet_id=wallet_id)),
    )
    await expect_error(
        grpc.StatusCode.NOT_FOUND,
        "WALLET_NOT_FOUND",
        balance_at(other_user, wallet_id, datetime.now(UTC)),
    )


async def test_the_balance_at_is_one_index_probe_on_a_long_history(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments, 1)
    with psycopg.connect(database_url) as conn:
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN SELECT balance_after, sequence FROM wallet.ledger_entries"
                " WHERE wallet_id = %s AND created_at <= now()"
                " ORDER BY created_at DESC, sequence DESC LIMIT 1",
                (wallet_id,),
            )
        )
    assert "ledger_entries_wallet_time" in plan, plan
