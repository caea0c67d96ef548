"""Holds (two-phase payments): authorise, capture all or part, void, expire; who may do what;
and the races where ledgers have broken before (blnk #41, #181, #182; tigerbeetle #2118)."""

import asyncio
import collections
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from shared.gen.wallet.v1 import wallet_pb2
from tests.test_wallet_concurrency import assert_invariants_hold, outcome
from tests.test_wallet_ledger import forget_keys_of
from tests.wallet_helpers import Caller, expect_error, new_key
from wallet_service.config import WalletSettings
from wallet_service.server import start as start_wallet

PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
HELD, CAPTURED, VOIDED, EXPIRED = (
    wallet_pb2.HOLD_STATUS_HELD,
    wallet_pb2.HOLD_STATUS_CAPTURED,
    wallet_pb2.HOLD_STATUS_VOIDED,
    wallet_pb2.HOLD_STATUS_EXPIRED,
)


async def funded(owner: Caller, payments: Caller, amount: int, currency: str = "EUR") -> str:
    wallet_id = (await owner.create_wallet(currency)).id
    await payments.credit(wallet_id, amount)
    return str(wallet_id)


async def get_hold(caller: Caller, hold_id: str) -> wallet_pb2.Hold:
    return (await caller.call("GetHold", wallet_pb2.GetHoldRequest(hold_id=hold_id))).hold


# --- placing a hold ------------------------------------------------------------------------


async def test_a_hold_reserves_the_available_balance_not_the_balance(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments, 1000)
    response = await user.create_hold(wallet_id, 300, "authorise-1")
    hold = response.hold
    assert (hold.status, hold.amount, hold.currency, hold.wallet_id) == (
        HELD,
        300,
        "EUR",
        wallet_id,
    )
    assert hold.idempotency_key == "authorise-1"
    assert response.available_balance_after == 700
    wallet = await user.wallet(wallet_id)
    assert (wallet.balance, wallet.available_balance) == (1000, 700)
    # The default expiry is 7 days ahead.
    ahead = hold.expire_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(days=6, hours=23) < ahead <= timedelta(days=7)
    await assert_invariants_hold(database_url)


async def test_a_hold_beyond_the_available_balance_is_refused_and_commits_nothing(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments, 100)
    await user.create_hold(wallet_id, 60)
    await expect_error(PRECONDITION, "INSUFFICIENT_FUNDS", user.create_hold(wallet_id, 41))
    holds = await user.call("ListHolds", wallet_pb2.ListHoldsRequest(wallet_id=wallet_id))
    assert [hold.amount for hold in holds.holds] == [60]
    # Debits and transfers see the available balance too.
    await expect_error(PRECONDITION, "INSUFFICIENT_FUNDS", user.debit(wallet_id, 41))
    assert (await user.debit(wallet_id, 40)).balance_after == 60
    await assert_invariants_hold(database_url)


async def test_a_hold_with_a_destination_needs_the_same_currency(
    user: Caller, other_user: Caller, payments: Caller
) -> None:
    wallet_id = await funded(user, payments, 100)
    dollars = (await other_user.create_wallet("USD")).id
    await expect_error(
        PRECONDITION, "CURRENCY_MISMATCH", user.create_hold(wallet_id, 10, destination=dollars)
    )


@pytest.mark.parametrize("seconds", [-60, 0, 31 * 24 * 3600])
async def test_an_expiry_in_the_past_or_beyond_30_days_is_refused(
    user: Caller, payments: Caller, seconds: int
) -> None:
    wallet_id = await funded(user, payments, 100)
    await expect_error(
        INVALID, "INVALID_EXPIRY", user.create_hold(wallet_id, 10, expires_in_seconds=seconds)
    )


async def test_only_the_owner_or_a_hold_service_places_holds(
    user: Caller, other_user: Caller, payments: Caller, checkout: Caller
) -> None:
    wallet_id = await funded(user, payments, 100)
    await expect_error(NOT_FOUND, "WALLET_NOT_FOUND", other_user.create_hold(wallet_id, 10))
    await expect_error(NOT_FOUND, "WALLET_NOT_FOUND", payments.create_hold(wallet_id, 10))
    placed = await checkout.create_hold(wallet_id, 10)
    assert placed.hold.status == HELD
    # A service that may hold a user's money is not told the user's balance.
    assert not placed.HasField("available_balance_after")


async def test_the_same_hold_key_replays_and_another_request_is_refused(
    user: Caller, payments: Caller
) -> None:
    wallet_id = await funded(user, payments, 100)
    first = await user.create_hold(wallet_id, 30, "h-1")
    again = await user.create_hold(wallet_id, 30, "h-1")
    assert again == first
    assert (await user.wallet(wallet_id)).available_balance == 70
    await expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
        user.create_hold(wallet_id, 31, "h-1"),
    )


# --- capture -------------------------------------------------------------------------------


async def test_a_partial_capture_debits_that_much_and_releases_the_rest(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments, 1000)
    hold = (await user.create_hold(wallet_id, 400)).hold
    captured = await user.capture(hold.id, 250)
    assert (captured.hold.status, captured.hold.captured_amount) == (CAPTURED, 250)
    transaction = captured.transaction
    assert (transaction.type, transaction.amount, transaction.hold_id) == (
        wallet_pb2.TRANSACTION_TYPE_CAPTURE,
        250,
        hold.id,
    )
    assert captured.hold.capture_transaction_id == transaction.id
    assert captured.source_balance_after == 750
    wallet = await user.wallet(wallet_id)
    assert (wallet.balance, wallet.available_balance) == (750, 750)
    await assert_invariants_hold(database_url)


async def test_a_capture_to_a_destination_is_a_transfer_and_shows_in_both_histories(
    user: Caller, other_user: Caller, payments: Caller, checkout: Caller
) -> None:
    buyer = await funded(user, payments, 500)
    merchant = (await other_user.create_wallet()).id
    hold = (await checkout.create_hold(buyer, 200, destination=merchant)).hold
    captured = await checkout.capture(hold.id)  # 0: all of it
    assert captured.transaction.amount == 200
    assert captured.transaction.destination_wallet_id == merchant
    assert not captured.HasField("source_balance_after")  # not the checkout's to know
    assert await other_user.balance(merchant) == 200
    assert await user.balance(buyer) == 300
    for caller, wallet_id, change in ((user, buyer, -200), (other_user, merchant, 200)):
        entries = (
            await caller.call(
                "ListTransactions",
                wallet_pb2.ListTransactionsRequest(
                    wallet_id=wallet_id, type=wallet_pb2.TRANSACTION_TYPE_CAPTURE
                ),
            )
        ).entries
        assert [(e.balance_change, e.transaction.hold_id) for e in entries] == [(change, hold.id)]


async def test_capture_refusals(user: Caller, payments: Caller) -> None:
    wallet_id = await funded(user, payments, 1000)
    hold = (await user.create_hold(wallet_id, 100)).hold
    await expect_error(PRECONDITION, "CAPTURE_EXCEEDS_HOLD", user.capture(hold.id, 101))
    await user.capture(hold.id, 100)
    await expect_error(PRECONDITION, "HOLD_ALREADY_CAPTURED", user.capture(hold.id, 1))
    await expect_error(PRECONDITION, "HOLD_ALREADY_CAPTURED", user.void(hold.id))
    voided = (await user.create_hold(wallet_id, 100)).hold
    await user.void(voided.id)
    await expect_error(PRECONDITION, "HOLD_VOIDED", user.capture(voided.id))
    await expect_error(PRECONDITION, "HOLD_VOIDED", user.void(voided.id))
    await expect_error(
        INVALID,
        "INVALID_HOLD_ID",
        user.call(
            "CaptureHold",
            wallet_pb2.CaptureHoldRequest(hold_id="nope", idempotency_key=new_key()),
        ),
    )


async def test_only_the_caller_that_placed_a_hold_or_an_admin_ends_it(
    user: Caller, other_user: Caller, payments: Caller, checkout: Caller, admin: Caller
) -> None:
    wallet_id = await funded(user, payments, 1000)
    by_checkout = (await checkout.create_hold(wallet_id, 100)).hold
    # The wallet's owner sees it, but it is the checkout's to capture or void.
    assert (await get_hold(user, by_checkout.id)).idempotency_key == ""
    for stranger in (user, other_user, payments):
        await expect_error(NOT_FOUND, "HOLD_NOT_FOUND", stranger.capture(by_checkout.id))
        await expect_error(NOT_FOUND, "HOLD_NOT_FOUND", stranger.void(by_checkout.id))
    await expect_error(
        NOT_FOUND,
        "HOLD_NOT_FOUND",
        other_user.call("GetHold", wallet_pb2.GetHoldRequest(hold_id=by_checkout.id)),
    )
    assert (await admin.capture(by_checkout.id, 40)).hold.captured_amount == 40


# --- void ----------------------------------------------------------------------------------


async def test_a_void_releases_the_hold_and_replays_after_its_record_is_cleaned_up(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments, 100)
    hold = (await user.create_hold(wallet_id, 70, "hold-v")).hold
    voided = await user.void(hold.id, "void-v")
    assert voided.hold.status == VOIDED and voided.available_balance_after == 100
    await forget_keys_of(database_url, user.subject)
    again = await user.void(hold.id, "void-v")
    assert again.hold == voided.hold
    assert (await user.create_hold(wallet_id, 70, "hold-v")).hold.id == hold.id
    await expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
        user.create_hold(wallet_id, 71, "hold-v"),
    )
    assert (await user.wallet(wallet_id)).available_balance == 100
    await assert_invariants_hold(database_url)


# --- expiry --------------------------------------------------------------------------------


async def test_an_expired_hold_stops_counting_and_cannot_be_captured_before_any_sweep(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments, 100)
    hold = (await user.create_hold(wallet_id, 80, expires_in_seconds=1)).hold
    assert (await user.wallet(wallet_id)).available_balance == 20
    await asyncio.sleep(1.2)
    # No sweep has run (the test servers sweep hourly): the expiry alone decides.
    assert (await user.wallet(wallet_id)).available_balance == 100
    assert (await get_hold(user, hold.id)).status == EXPIRED
    await expect_error(PRECONDITION, "HOLD_EXPIRED", user.capture(hold.id))
    await expect_error(PRECONDITION, "HOLD_EXPIRED", user.void(hold.id))
    assert (await user.debit(wallet_id, 100)).balance_after == 0
    listed = await user.call(
        "ListHolds",
        wallet_pb2.ListHoldsRequest(wallet_id=wallet_id, status=wallet_pb2.HOLD_STATUS_EXPIRED),
    )
    assert [h.id for h in listed.holds] == [hold.id]
    await assert_invariants_hold(database_url)


async def test_the_sweep_marks_expired_holds_once_with_several_instances(
    wallet_settings: WalletSettings, user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments, 100)
    hold = (await user.create_hold(wallet_id, 50, expires_in_seconds=1)).hold
    sweeping = [
        await start_wallet(wallet_settings.model_copy(update={"hold_sweep_interval_seconds": 0.2}))
        for _ in range(2)
    ]
    try:
        await asyncio.sleep(1.8)
    finally:
        for server in sweeping:
            await server.stop(grace=0)
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT h.status, h.finished_at = h.expires_at, w.held FROM wallet.holds h"
            " JOIN wallet.wallets w ON w.id = h.wallet_id WHERE h.id = %s",
            (hold.id,),
        ).fetchone()
    assert row == ("expired", True, 0)
    await assert_invariants_hold(database_url)


# --- races ---------------------------------------------------------------------------------


async def test_50_concurrent_captures_of_one_hold_exactly_one_wins(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments, 1000)
    hold = (await user.create_hold(wallet_id, 500)).hold
    outcomes = await asyncio.gather(*(outcome(user.capture(hold.id, 500)) for _ in range(50)))
    assert collections.Counter(outcomes) == {
        "OK": 1,
        "FAILED_PRECONDITION HOLD_ALREADY_CAPTURED": 49,
    }
    assert await user.balance(wallet_id) == 500
    await assert_invariants_hold(database_url)


async def test_capture_racing_void_exactly_one_wins(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments, 10_000)
    # Another live hold, so that the wallet's held total cannot catch a hold ended twice.
    await user.create_hold(wallet_id, 1000)
    for _ in range(10):
        hold = (await user.create_hold(wallet_id, 100)).hold
        calls = [outcome(user.capture(hold.id)) for _ in range(5)]
        calls += [outcome(user.void(hold.id)) for _ in range(5)]
        outcomes = collections.Counter(await asyncio.gather(*calls))
        assert outcomes in (
            {"OK": 1, "FAILED_PRECONDITION HOLD_ALREADY_CAPTURED": 9},
            {"OK": 1, "FAILED_PRECONDITION HOLD_VOIDED": 9},
        ), outcomes
    wallet = await user.wallet(wallet_id)
    assert wallet.available_balance == wallet.balance - 1000
    await assert_invariants_hold(database_url)


async def test_holds_and_concurrent_debits_never_overdraw(
    user: Caller, payments: Caller, database_url: str
) -> None:
    wallet_id = await funded(user, payments, 1000)
    calls = []
    for _ in range(60):
        calls.append(outcome(user.create_hold(wallet_id, 30)))
        calls.append(outcome(user.debit(wallet_id, 30)))
    outcomes = collections.Counter(await asyncio.gather(*calls))
    assert outcomes["OK"] == 33  # 1000 // 30: not one more
    wallet = await user.wallet(wallet_id)
    assert wallet.available_balance == 1000 - 33 * 30
    await assert_invariants_hold(database_url)
