"""WatchEvents: every committed change once, in each wallet's order, resumable from a cursor,
never skipping an event whose transaction commits after a later one's (the outbox gap)."""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import psycopg
import pytest

from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from shared.server import RunningServer
from tests.test_wallet_batches import batch, credit
from tests.wallet_helpers import Caller, expect_error, new_service, new_user
from wallet_service import page_tokens
from wallet_service.config import WalletSettings
from wallet_service.server import start as start_wallet
from wallet_service.store import events as events_store

POSTED = wallet_pb2.EVENT_TYPE_TRANSACTION_POSTED


class Watcher:
    """A WatchEvents stream read in the background into a list."""

    def __init__(self, caller: Caller, after_cursor: str = "", wallet_id: str = "") -> None:
        self.call = caller.stub.WatchEvents(
            wallet_pb2.WatchEventsRequest(after_cursor=after_cursor, wallet_id=wallet_id),
            metadata=caller.metadata,
        )
        self.events: list[wallet_pb2.WalletEvent] = []
        self.heartbeats = 0
        self.heartbeat_cursors: list[str] = []
        self.error: grpc.aio.AioRpcError | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.call:
                if message.HasField("event"):
                    self.events.append(message.event)
                else:
                    self.heartbeats += 1
                    self.heartbeat_cursors.append(message.heartbeat.cursor)
        except asyncio.CancelledError:
            pass
        except grpc.aio.AioRpcError as error:
            self.error = error

    async def wait_for(self, condition: Any, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not condition(self):
            assert time.monotonic() < deadline, f"gave up waiting; have {len(self.events)}"
            assert not self._reader.done(), f"the stream ended: {self.error}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def watching(
    caller: Caller, after_cursor: str = "", wallet_id: str = ""
) -> AsyncIterator[Watcher]:
    watcher = Watcher(caller, after_cursor, wallet_id)
    # The first heartbeat says the stream has taken its starting point.
    await watcher.wait_for(lambda watcher: watcher.heartbeats >= 1)
    try:
        yield watcher
    finally:
        await watcher.close()


def posted(watcher: Watcher) -> list[wallet_pb2.WalletEvent]:
    """The TRANSACTION_POSTED events: a stream "from now" may also start a moment before a
    wallet's creation, and so show its WALLET_CREATED."""
    return [event for event in watcher.events if event.type == POSTED]


async def test_a_watcher_sees_its_wallets_changes_as_they_commit(
    user: Caller, other_user: Caller, payments: Caller
) -> None:
    async with watching(user) as mine, watching(other_user) as theirs:
        wallet_id = (await user.create_wallet()).id
        await payments.credit(wallet_id, 500, "top-up-1")
        destination = (await other_user.create_wallet()).id
        await user.call(
            "Transfer",
            wallet_pb2.TransferRequest(
                source_wallet_id=wallet_id,
                destination_wallet_id=destination,
                amount=200,
                idempotency_key="pay-bob",
                reference="lunch",
            ),
        )
        hold = (await user.create_hold(wallet_id, 100)).hold
        await user.void(hold.id)
        await mine.wait_for(lambda w: len(w.events) >= 5)
        await theirs.wait_for(lambda w: len(w.events) >= 2)
        await asyncio.sleep(0.3)
    assert [e.type for e in mine.events] == [
        wallet_pb2.EVENT_TYPE_WALLET_CREATED,
        POSTED,
        POSTED,
        wallet_pb2.EVENT_TYPE_HOLD_PLACED,
        wallet_pb2.EVENT_TYPE_HOLD_VOIDED,
    ]
    credit_event, transfer_event = mine.events[1], mine.events[2]
    assert (credit_event.entry.balance_after, credit_event.entry.sequence) == (500, 1)
    assert (transfer_event.entry.balance_change, transfer_event.entry.sequence) == (-200, 2)
    # The payer's own request shows in full; the credit's key is the payments service's.
    assert transfer_event.entry.transaction.reference == "lunch"
    assert credit_event.entry.transaction.idempotency_key == ""
    # The recipient sees only its own wallet, and not the payer's key or note.
    assert {e.wallet_id for e in theirs.events} == {destination}
    received = next(e for e in theirs.events if e.type == POSTED).entry
    assert (received.balance_change, received.transaction.reference) == (200, "")
    assert received.transaction.idempotency_key == ""


async def test_resuming_from_a_cursor_gives_every_later_event_once(
    user: Caller, payments: Caller
) -> None:
    wallet_id = (await user.create_wallet()).id
    async with watching(user, wallet_id=wallet_id) as first:
        for index in range(10):
            await payments.credit(wallet_id, 1 + index)
        await first.wait_for(lambda w: len(posted(w)) >= 10)
    middle = posted(first)[3]
    async with watching(user, after_cursor=middle.cursor, wallet_id=wallet_id) as resumed:
        await payments.credit(wallet_id, 100)
        await resumed.wait_for(lambda w: len(posted(w)) >= 7)
        await asyncio.sleep(0.3)
    assert [e.entry.sequence for e in posted(resumed)] == list(range(5, 12))


async def test_a_heartbeats_cursor_resumes_a_stream_that_has_sent_no_event_yet(
    user: Caller, payments: Caller
) -> None:
    wallet_id = (await user.create_wallet()).id
    async with watching(user, wallet_id=wallet_id) as first:
        cursor = first.heartbeat_cursors[0]
    assert first.events == []
    # Money moves while no stream is open: a new stream from now would never show it.
    await payments.credit(wallet_id, 5)
    async with watching(user, after_cursor=cursor, wallet_id=wallet_id) as resumed:
        await resumed.wait_for(lambda w: len(posted(w)) >= 1)
    assert [(e.entry.sequence, e.entry.balance_change) for e in posted(resumed)] == [(1, 5)]


async def test_who_may_watch_what(
    user: Caller,
    other_user: Caller,
    payments: Caller,
    auth_channel: grpc.aio.Channel,
    wallet_channel: grpc.aio.Channel,
    database_url: str,
) -> None:
    wallet_id = (await user.create_wallet()).id
    # Watching someone else's wallet looks like watching a wallet that does not exist.
    await expect_error(
        grpc.StatusCode.NOT_FOUND,
        "WALLET_NOT_FOUND",
        other_user.stub.WatchEvents(
            wallet_pb2.WatchEventsRequest(wallet_id=wallet_id), metadata=other_user.metadata
        ).read(),
    )
    events_service = await new_service(
        auth_channel, wallet_channel, database_url, ["wallet:events"]
    )
    async with watching(events_service, wallet_id=wallet_id) as all_seeing:
        await payments.credit(wallet_id, 5, "seen-by-ops")
        await all_seeing.wait_for(lambda w: len(posted(w)) >= 1)
    # wallet:events sees every wallet, in full.
    assert posted(all_seeing)[0].entry.transaction.idempotency_key == "seen-by-ops"


async def test_a_cursor_must_be_one_the_api_issued_and_not_older_than_the_retention(
    user: Caller,
) -> None:
    for cursor in ("garbage", page_tokens.encode(["ev", 1, 2], ["events"])):
        await expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_CURSOR",
            user.stub.WatchEvents(
                wallet_pb2.WatchEventsRequest(after_cursor=cursor), metadata=user.metadata
            ).read(),
        )
    old = page_tokens.encode(["ev", 1, 1, int(time.time()) - 8 * 86400], ["events"])
    # A transaction id this cluster has not handed out yet: a cursor from before a restore
    # (elsewhere, or to an earlier instant) would skip the events written since.
    from_before_a_restore = page_tokens.encode(["ev", 2**62, 1, int(time.time())], ["events"])
    for cursor in (old, from_before_a_restore):
        await expect_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            "CURSOR_EXPIRED",
            user.stub.WatchEvents(
                wallet_pb2.WatchEventsRequest(after_cursor=cursor), metadata=user.metadata
            ).read(),
        )


async def test_an_idle_stream_gets_heartbeats(
    wallet_settings: WalletSettings, user: Caller
) -> None:
    server = await start_wallet(wallet_settings.model_copy(update={"watch_heartbeat_seconds": 0.2}))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            caller = Caller(type(user.stub)(channel), user.token, user.subject)
            async with watching(caller) as idle:
                await idle.wait_for(lambda w: w.heartbeats >= 3, seconds=10)
    finally:
        await server.stop(grace=0)


# --- the outbox gap ------------------------------------------------------------------------


def insert_event(conn: psycopg.Connection[Any], wallet_id: str, owner: str, note: str) -> int:
    payload = wallet_pb2.WalletEvent(
        type=wallet_pb2.EVENT_TYPE_WALLET_STATUS_CHANGED,
        wallet_id=wallet_id,
        wallet=wallet_pb2.Wallet(id=wallet_id, status_reason=note),
    ).SerializeToString()
    row = conn.execute(
        "INSERT INTO wallet.events (wallet_id, owner_id, requested_by, type, payload, created_at)"
        " VALUES (%s, %s, %s, 'TEST', %s, now()) RETURNING id",
        (wallet_id, owner, owner, payload),
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_an_event_that_commits_after_a_later_one_is_not_skipped(
    user: Caller, database_url: str
) -> None:
    wallet_id = (await user.create_wallet()).id
    async with watching(user, wallet_id=wallet_id) as watcher:
        with psycopg.connect(database_url) as early, psycopg.connect(database_url) as late:
            first_id = insert_event(early, wallet_id, user.subject, "allocated first")
            second_id = insert_event(late, wallet_id, user.subject, "allocated second")
            assert first_id < second_id
            late.commit()  # the later id commits first...
            late.execute("NOTIFY wallet_events")  # ...the watcher is woken and reads at once...
            late.commit()
            await asyncio.sleep(0.5)  # ...and a naive "id > last seen" reader takes it now
            early.commit()
            early.execute("NOTIFY wallet_events")
            early.commit()
        await watcher.wait_for(lambda w: len(allocated(w)) >= 2, seconds=15)
        await asyncio.sleep(0.3)
    assert allocated(watcher) == ["allocated first", "allocated second"]


def allocated(watcher: Watcher) -> list[str]:
    """The test's own events ("now" may fall before the wallet's creation, so its
    WALLET_CREATED may come too: not the point here)."""
    return [
        e.wallet.status_reason
        for e in watcher.events
        if e.type != wallet_pb2.EVENT_TYPE_WALLET_CREATED
    ]


# --- a watcher under load ------------------------------------------------------------------


def event_id(event: wallet_pb2.WalletEvent) -> int:
    cursor = page_tokens.decode(event.cursor, ["events"])
    assert cursor is not None
    return int(cursor[2])


@pytest.mark.slow
async def test_a_watcher_under_load_gets_every_event_once_in_each_wallets_order_across_a_resume(
    auth_channel: grpc.aio.Channel,
    wallet_channel: grpc.aio.Channel,
    payments: Caller,
    admin: Caller,
    database_url: str,
) -> None:
    owners = [await new_user(auth_channel, wallet_channel) for _ in range(5)]
    wallets = [(await owner.create_wallet()).id for owner in owners]
    first = Watcher(admin)
    await asyncio.sleep(0.3)

    async def writer(index: int) -> None:
        owner, wallet_id = owners[index], wallets[index]
        for round_ in range(12):
            await payments.credit(wallet_id, 50)
            await owner.transfer(wallet_id, wallets[(index + 1 + round_ % 4) % 5], 7)
            if round_ % 4 == 0:
                await batch(payments, *(credit(w, 1) for w in wallets))

    writers = asyncio.gather(*(writer(i) for i in range(5)))
    await first.wait_for(lambda w: len(w.events) >= 20)
    await first.close()  # a disconnect in the middle of the load, then a resume
    resumed = Watcher(admin, after_cursor=first.events[-1].cursor)
    await writers
    with psycopg.connect(database_url) as conn:
        expected = {
            row[0]
            for row in conn.execute(
                "SELECT id FROM wallet.events WHERE wallet_id = ANY(%s)"
                " AND type <> 'EVENT_TYPE_WALLET_CREATED'",
                ([uuid.UUID(w) for w in wallets],),
            )
        }
    assert len(expected) == 5 * (12 * 3 + 3 * 5)

    def ours(watcher: Watcher) -> list[wallet_pb2.WalletEvent]:
        """The load's events ("now" may fall before or after the wallets' creation)."""
        return [
            e
            for e in watcher.events
            if e.wallet_id in wallets and e.type != wallet_pb2.EVENT_TYPE_WALLET_CREATED
        ]

    await resumed.wait_for(lambda w: len(ours(first)) + len(ours(w)) >= len(expected), seconds=60)
    await asyncio.sleep(0.5)
    await resumed.close()
    received = ours(first) + ours(resumed)
    ids = [event_id(e) for e in received]
    assert len(ids) == len(set(ids)), "an event came twice"
    assert set(ids) == expected, "an event was missed"
    for wallet_id in wallets:
        sequences = [
            e.entry.sequence for e in received if e.wallet_id == wallet_id and e.type == POSTED
        ]
        assert sequences == list(range(1, len(sequences) + 1)), f"out of order for {wallet_id}"


async def test_a_reader_that_stops_reading_stops_the_servers_reading_too(
    admin: Caller,
    payments: Caller,
    user: Caller,
    wallet_server: RunningServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gRPC's flow control holds the server's writes: it reads no further ahead than a page
    or so past what the client's window takes, however many events wait."""
    read = [0]
    real = events_store.read_page

    async def counting(*args: Any, **kwargs: Any) -> Any:
        page = await real(*args, **kwargs)
        read[0] += len(page.events)
        return page

    monkeypatch.setattr(events_store, "read_page", counting)
    wallet_id = (await user.create_wallet()).id
    # No BDP probing: the client's window stays at its first size, as for a slow reader.
    options = [("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{wallet_server.port}", options=options
    ) as channel:
        call = wallet_pb2_grpc.WalletServiceStub(channel).WatchEvents(
            wallet_pb2.WatchEventsRequest(wallet_id=wallet_id), metadata=admin.metadata
        )
        assert (await call.read()).heartbeat.cursor  # the stream has its starting point
        await payments.credit(wallet_id, 1)
        while (await call.read()).event.type != POSTED:  # "now" may come before the creation
            pass
        for _ in range(30):
            await batch(payments, *(credit(wallet_id, 1) for _ in range(100)))
        await asyncio.sleep(2)
        assert read[0] < 1500, f"read {read[0]} of 3001 events while the client read none"
        for _ in range(3000):
            assert (await call.read()).event.type == POSTED
        call.cancel()
    assert read[0] >= 3001
