"""The client library against the real servers: every wallet RPC, the page iterators, typed
errors with their metadata, and the synchronous wrapper."""

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from shared.gen.wallet.v1 import wallet_pb2
from shared.server import RunningServer
from tests.auth_helpers import PASSWORD, unique_email
from tests.client_helpers import address, new_service_account, service_client, user_client
from wallet_client import (
    RetryPolicy,
    SyncWalletClient,
    WalletClient,
    credit_movement,
    debit_movement,
    errors,
    transfer_movement,
)

WALLET_DOMAIN = "wallet.v1.WalletService"


@pytest.fixture
async def ada(
    wallet_server: RunningServer, auth_server: RunningServer
) -> AsyncIterator[WalletClient]:
    async with user_client(wallet_server, auth_server) as client:
        yield client


@pytest.fixture
async def grace(
    wallet_server: RunningServer, auth_server: RunningServer
) -> AsyncIterator[WalletClient]:
    async with user_client(wallet_server, auth_server) as client:
        yield client


@pytest.fixture(scope="session")
async def bank(
    wallet_server: RunningServer, auth_server: RunningServer, database_url: str
) -> AsyncIterator[WalletClient]:
    """The payments service: a service account with wallet:credit."""
    async with service_client(wallet_server, auth_server, database_url, ["wallet:credit"]) as bank:
        yield bank


@pytest.fixture(scope="session")
async def ops(
    wallet_server: RunningServer, auth_server: RunningServer, database_url: str
) -> AsyncIterator[WalletClient]:
    """An operator's tool: a service account with wallet:admin."""
    async with service_client(wallet_server, auth_server, database_url, ["wallet:admin"]) as ops:
        yield ops


async def funded_wallet(owner: WalletClient, bank: WalletClient, amount: int) -> str:
    wallet = (await owner.create_wallet("EUR")).wallet
    await bank.credit(wallet.id, amount, reference="top-up")
    return wallet.id


async def test_wallets_are_created_read_and_listed_page_by_page(ada: WalletClient) -> None:
    created = [(await ada.create_wallet(currency)).wallet for currency in ("EUR", "USD", "JPY")]
    fetched = (await ada.get_wallet(created[1].id)).wallet
    assert (fetched.currency, fetched.balance, fetched.status) == (
        "USD",
        0,
        wallet_pb2.WALLET_STATUS_ACTIVE,
    )
    first_page = await ada.list_wallets(page_size=2)
    assert [w.id for w in first_page.wallets] == [w.id for w in created[:2]]
    assert first_page.next_page_token
    assert [w.id async for w in ada.iter_wallets(page_size=2)] == [w.id for w in created]


async def test_money_moves_with_generated_keys_and_a_replay_answers_the_first_outcome(
    ada: WalletClient, grace: WalletClient, bank: WalletClient
) -> None:
    source = (await ada.create_wallet("EUR")).wallet.id
    destination = (await grace.create_wallet("EUR")).wallet.id
    credit = await bank.credit(source, 10_000)
    uuid.UUID(credit.transaction.idempotency_key)  # made up by the client, returned to it
    debit = await ada.debit(source, 2_500, reference="coffee", metadata={"order": "7"})
    assert debit.balance_after == 7_500
    assert debit.transaction.metadata == {"order": "7"}
    transfer = await ada.transfer(source, destination, 4_000, idempotency_key="rent-share")
    assert (transfer.source_balance_after, transfer.transaction.idempotency_key) == (
        3_500,
        "rent-share",
    )
    replay = await ada.transfer(source, destination, 4_000, idempotency_key="rent-share")
    assert replay.transaction.id == transfer.transaction.id
    assert (await ada.get_wallet(source)).wallet.balance == 3_500
    assert (await grace.get_wallet(destination)).wallet.balance == 4_000
    seen_by_grace = await grace.get_transaction(transfer.transaction.id)
    assert seen_by_grace.transaction.amount == 4_000


async def test_history_is_iterated_across_pages_with_its_filters(
    ada: WalletClient, bank: WalletClient
) -> None:
    wallet_id = await funded_wallet(ada, bank, 1_000)
    for amount in (10, 20, 30):
        await ada.debit(wallet_id, amount, metadata={"kind": "fee" if amount == 20 else "buy"})
    entries = [entry async for entry in ada.iter_transactions(wallet_id, page_size=2)]
    assert [entry.sequence for entry in entries] == [4, 3, 2, 1]
    assert [entry.balance_change for entry in entries] == [-30, -20, -10, 1_000]
    debits = ada.iter_transactions(wallet_id, transaction_type=wallet_pb2.TRANSACTION_TYPE_DEBIT)
    assert [entry.sequence async for entry in debits] == [4, 3, 2]
    fees = ada.iter_transactions(wallet_id, metadata_key="kind", metadata_value="fee")
    assert [entry.balance_change async for entry in fees] == [-20]
    future = datetime.now(UTC) + timedelta(days=1)
    assert [e async for e in ada.iter_transactions(wallet_id, start_time=future)] == []


async def test_holds_are_placed_captured_voided_and_listed(
    ada: WalletClient, grace: WalletClient, bank: WalletClient
) -> None:
    wallet_id = await funded_wallet(ada, bank, 1_000)
    shop = (await grace.create_wallet("EUR")).wallet.id
    placed = await ada.create_hold(wallet_id, 600, destination_wallet_id=shop, reference="cart")
    assert placed.available_balance_after == 400
    captured = await ada.capture_hold(placed.hold.id, 450)
    assert captured.hold.status == wallet_pb2.HOLD_STATUS_CAPTURED
    assert (captured.source_balance_after, captured.transaction.amount) == (550, 450)
    second = await ada.create_hold(wallet_id, 100)
    voided = await ada.void_hold(second.hold.id)
    assert (voided.hold.status, voided.available_balance_after) == (
        wallet_pb2.HOLD_STATUS_VOIDED,
        550,
    )
    assert (await ada.get_hold(placed.hold.id)).hold.captured_amount == 450
    everything = [hold.id async for hold in ada.iter_holds(wallet_id, page_size=1)]
    assert everything == [second.hold.id, placed.hold.id]
    only_voided = await ada.list_holds(wallet_id, status=wallet_pb2.HOLD_STATUS_VOIDED)
    assert [hold.id for hold in only_voided.holds] == [second.hold.id]


async def test_refunds_and_batches(
    ada: WalletClient, grace: WalletClient, bank: WalletClient
) -> None:
    source = await funded_wallet(ada, bank, 1_000)
    destination = (await grace.create_wallet("EUR")).wallet.id
    batch = await ada.execute_batch(
        [
            transfer_movement(source, destination, 300, reference="order 77"),
            debit_movement(source, 50, reference="fee"),
        ]
    )
    assert [t.type for t in batch.transactions] == [
        wallet_pb2.TRANSACTION_TYPE_TRANSFER,
        wallet_pb2.TRANSACTION_TYPE_DEBIT,
    ]
    assert {b.wallet_id: b.balance_after for b in batch.balances_after} == {source: 650}
    refund = await grace.refund_transaction(batch.transactions[0].id, 100)
    assert (refund.original.refunded_amount, refund.source_balance_after) == (100, 200)
    assert not refund.HasField("destination_balance_after")  # Ada's balance is not Grace's
    assert (await ada.get_wallet(source)).wallet.balance == 750
    with pytest.raises(errors.InsufficientFunds) as refused:
        await ada.execute_batch([debit_movement(source, 10), debit_movement(source, 10_000)])
    assert refused.value.batch_index == 1
    assert refused.value.metadata["wallet_id"] == source
    with pytest.raises(errors.MissingScope) as not_allowed:
        await ada.execute_batch([debit_movement(source, 10), credit_movement(source, 10)])
    assert not_allowed.value.batch_index == 1
    assert (await ada.get_wallet(source)).wallet.balance == 750  # all or nothing


async def test_balances_in_time_and_wallet_status(
    ada: WalletClient, bank: WalletClient, ops: WalletClient
) -> None:
    wallet_id = await funded_wallet(ada, bank, 500)
    await asyncio.sleep(0.01)
    after_credit = datetime.now(UTC)
    await ada.debit(wallet_id, 200)
    then = await ada.get_balance_at(wallet_id, after_credit)
    assert (then.balance, then.sequence) == (500, 1)
    frozen = await ops.update_wallet_status(
        wallet_id, wallet_pb2.WALLET_STATUS_DEBITS_FROZEN, "chargeback review"
    )
    assert frozen.wallet.status_reason == "chargeback review"
    with pytest.raises(errors.WalletFrozen) as refused:
        await ada.debit(wallet_id, 1)
    assert refused.value.metadata == {"wallet_id": wallet_id, "status": "DEBITS_FROZEN"}
    await ops.update_wallet_status(wallet_id, wallet_pb2.WALLET_STATUS_ACTIVE, "cleared")
    assert (await ada.debit(wallet_id, 1)).balance_after == 299


async def test_errors_are_typed_and_carry_code_reason_metadata_and_key(
    ada: WalletClient, bank: WalletClient
) -> None:
    wallet_id = await funded_wallet(ada, bank, 100)
    with pytest.raises(errors.InsufficientFunds) as too_much:
        await ada.debit(wallet_id, 101, idempotency_key="too-much")
    error = too_much.value
    assert isinstance(error, errors.FailedPrecondition)
    assert (error.code, error.reason, error.domain) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
        WALLET_DOMAIN,
    )
    assert error.metadata["wallet_id"] == wallet_id
    assert error.idempotency_key == "too-much"
    assert error.request_id
    assert str(error).startswith("FAILED_PRECONDITION INSUFFICIENT_FUNDS: ")

    with pytest.raises(errors.IdempotencyKeyReused):
        await ada.debit(wallet_id, 1, idempotency_key="too-much")
    with pytest.raises(errors.WalletNotFound) as missing:
        await ada.get_wallet(str(uuid.uuid4()))
    assert isinstance(missing.value, errors.NotFound)
    assert missing.value.idempotency_key is None  # not a money call
    with pytest.raises(errors.MissingScope) as no_scope:
        await ada.credit(wallet_id, 1)
    assert no_scope.value.metadata == {"scope": "wallet:credit"}
    with pytest.raises(errors.SameWallet):
        await ada.transfer(wallet_id, wallet_id, 1)
    with pytest.raises(errors.InvalidAmount):
        await ada.debit(wallet_id, -5)
    with pytest.raises(errors.WalletExists):
        await ada.create_wallet("EUR")

    hold = await ada.create_hold(
        wallet_id, 10, expire_time=datetime.now(UTC) + timedelta(seconds=0.3)
    )
    await asyncio.sleep(0.4)
    with pytest.raises(errors.HoldExpired) as expired:
        await ada.capture_hold(hold.hold.id)
    assert expired.value.metadata["hold_id"] == hold.hold.id


def test_an_unknown_reason_is_the_class_of_its_status_code() -> None:
    assert errors.error_class(grpc.StatusCode.FAILED_PRECONDITION, "NEW_RULE") is (
        errors.FailedPrecondition
    )
    # A known reason under another code than its own is not trusted to be that reason.
    assert errors.error_class(grpc.StatusCode.NOT_FOUND, "INSUFFICIENT_FUNDS") is errors.NotFound
    assert issubclass(errors.LockTimeout, errors.OutcomeUnknown)


ROOT = Path(__file__).resolve().parent.parent
CODES = "|".join(code.name for code in grpc.StatusCode)
UPPER_SNAKE = r"[A-Z][A-Z_]*[A-Z]"


def reasons_in_the_contract() -> set[tuple[str, str]]:
    """Every (code, reason) the protos' comments name, as in "Errors: NOT_FOUND
    WALLET_NOT_FOUND; FAILED_PRECONDITION INSUFFICIENT_FUNDS, CURRENCY_MISMATCH"."""
    found = set()
    for proto in (ROOT / "protos").rglob("*.proto"):
        comments = " ".join(re.findall(r"//(.*)", proto.read_text()))
        comments = re.sub(r"\([^)]*\)", "", comments)  # "(a refund)" and the like
        for code, names in re.findall(rf"\b({CODES})\s+((?:{UPPER_SNAKE}\s*,?\s*)+)", comments):
            found |= {(code, name) for name in re.findall(UPPER_SNAKE, names)}
    return found


def reasons_the_services_raise() -> set[tuple[str, str]]:
    """Every (code, reason) the services' code raises directly, as in
    `invalid_argument("INVALID_AMOUNT", ...)` or `Refusal("HOLD_VOIDED", ...)`."""
    found = set()
    for folder in ("auth_service", "wallet_service", "shared"):
        for source in (ROOT / folder).rglob("*.py"):
            text = source.read_text()
            for helper, reason in re.findall(rf"\b([a-z_]+|Refusal)\(\s*\"({UPPER_SNAKE})\"", text):
                code = "FAILED_PRECONDITION" if helper == "Refusal" else helper.upper()
                if code in grpc.StatusCode.__members__:
                    found.add((code, reason))
    return found


@pytest.mark.parametrize("source", [reasons_in_the_contract, reasons_the_services_raise])
def test_every_reason_has_its_exception_class(source: Callable[[], set[tuple[str, str]]]) -> None:
    named = source()
    assert ("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS") in named and len(named) > 30
    for code, reason in sorted(named):
        if code in ("DEADLINE_EXCEEDED", "INTERNAL", "CANCELLED"):
            continue  # their reason repeats the code: the code's class is the right one
        assert errors.error_class(grpc.StatusCode[code], reason).known_reason == reason, (
            f"no class for {code} {reason}: add one to wallet_client/errors.py"
        )


async def test_the_sync_client_serves_code_without_an_event_loop(
    wallet_server: RunningServer, auth_server: RunningServer
) -> None:
    email = unique_email("sync")

    def a_script() -> tuple[str, list[str], int]:
        with SyncWalletClient(address(wallet_server), address(auth_server)) as client:
            client.register(email, PASSWORD, "Sync")
            client.login(email, PASSWORD)
            wallets = [client.create_wallet(c).wallet.id for c in ("EUR", "USD")]
            try:
                client.debit(wallets[0], 1)
            except errors.InsufficientFunds as error:
                reason = error.reason
            listed = [wallet.id for wallet in client.iter_wallets(page_size=1)]
            fast = client.with_retry_policy(RetryPolicy(total_timeout=5))
            balance = fast.get_wallet(wallets[1]).wallet.balance
            assert client.tokens is not None
            return reason, [*wallets, *listed], balance

    # The servers run on this test's event loop: the script runs in a thread, as it would.
    reason, ids, balance = await asyncio.to_thread(a_script)
    assert reason == "INSUFFICIENT_FUNDS"
    assert ids[:2] == ids[2:]
    assert balance == 0


def the_guides_example() -> str:
    """The first Python block of docs/client.md: a whole session with the client."""
    guide = (ROOT / "docs" / "client.md").read_text()
    match = re.search(r"```python\n(.*?)```", guide, re.S)
    assert match is not None
    return match.group(1)


async def test_the_guides_example_runs_as_written(
    wallet_server: RunningServer,
    auth_server: RunningServer,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(the_guides_example(), "docs/client.md", "exec"), namespace)
    client_id, secret = await new_service_account(database_url, ["wallet:credit"])
    await namespace["main"](
        address(wallet_server), address(auth_server), client_id, secret, unique_email("guide")
    )
    printed = capsys.readouterr().out.split("\n")
    assert printed[0].startswith("9750 ")
    assert printed[1].startswith("INSUFFICIENT_FUNDS ")
    assert printed[2:4] == ["7250", "refused movement 1"]
    assert printed[4:7] == ["3 -2500 7250", "2 -250 9750", "1 10000 10000"]


async def test_the_sync_client_follows_events_with_a_plain_iterator(
    wallet_server: RunningServer, auth_server: RunningServer, bank: WalletClient
) -> None:
    async with user_client(wallet_server, auth_server) as ada:
        wallet_id = (await ada.create_wallet("EUR")).wallet.id
        tokens = ada.tokens

    def follow() -> wallet_pb2.WalletEvent:
        with SyncWalletClient(address(wallet_server), address(auth_server)) as client:
            client.use_tokens(tokens)
            for event in client.watch_events(wallet_id=wallet_id):
                if event.type == wallet_pb2.EVENT_TYPE_TRANSACTION_POSTED:
                    return event  # leaving the loop ends the stream
        raise AssertionError("the stream ended")

    follower = asyncio.ensure_future(asyncio.to_thread(follow))
    while not follower.done():  # a stream from now: credit until it has seen one
        await bank.credit(wallet_id, 1)
        await asyncio.sleep(0.1)
    event = await follower
    assert (event.wallet_id, event.entry.balance_change) == (wallet_id, 1)
