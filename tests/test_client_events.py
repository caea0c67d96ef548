"""The client library's WatchEvents iterator against real servers: it resumes by itself from
its last cursor across a wallet server crash and restart, without losing or repeating an event, hands
out events only (heartbeats come every 0.1 s here), and ends on an error that resuming cannot
cure."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.gen.wallet.v1 import wallet_pb2
from shared.server import RunningServer
from tests.client_helpers import (
    client_of,
    log_in_new_user,
    service_client,
    wallet_process_of,
)
from tests.processes import ServiceProcess
from wallet_client import EventStream, errors


@pytest.fixture
async def wallet_process(
    database_url: str, auth_server: RunningServer, tmp_path: Path
) -> AsyncIterator[ServiceProcess]:
    # Heartbeats every 0.1 s: the stream is idle most of the time, and they must not surface.
    async with wallet_process_of(
        database_url, auth_server, tmp_path, WATCH_HEARTBEAT_SECONDS="0.1"
    ) as process:
        yield process


async def collect(stream: EventStream, into: list[wallet_pb2.WalletEvent]) -> None:
    async for event in stream:
        into.append(event)


def sequences(events: list[wallet_pb2.WalletEvent]) -> list[int]:
    """The ledger sequence numbers of the wallet's TRANSACTION_POSTED events, as received."""
    return [e.entry.sequence for e in events if e.type == wallet_pb2.EVENT_TYPE_TRANSACTION_POSTED]


async def wait_for_sequence(
    events: list[wallet_pb2.WalletEvent], sequence: int, reader: asyncio.Task[None]
) -> None:
    for _ in range(500):
        assert not reader.done(), reader
        if sequence in sequences(events):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no event for entry {sequence}; have {sequences(events)}")


async def test_the_stream_resumes_across_a_server_crash_without_losing_or_repeating_events(
    wallet_process: ServiceProcess,
    wallet_server: RunningServer,
    auth_server: RunningServer,
    database_url: str,
) -> None:
    async with (
        client_of(wallet_process.address, auth_server) as ada,
        # Money keeps moving through another wallet server on the same database, also while
        # Ada's server is down.
        service_client(wallet_server, auth_server, database_url, ["wallet:credit"]) as bank,
    ):
        await log_in_new_user(ada)
        wallet_id = (await ada.create_wallet("EUR")).wallet.id
        events: list[wallet_pb2.WalletEvent] = []
        stream = ada.watch_events(wallet_id=wallet_id)
        reader = asyncio.create_task(collect(stream, events))
        credits = 0
        # A stream "from now" has no cursor until its first event: credit until it sees one.
        while not sequences(events):
            await bank.credit(wallet_id, 1)
            credits += 1
            await asyncio.sleep(0.05)
        first = sequences(events)[0]
        for _ in range(3):
            await bank.credit(wallet_id, 1)
        await wait_for_sequence(events, credits + 3, reader)

        wallet_process.kill()
        for _ in range(3):
            await bank.credit(wallet_id, 1)
        await asyncio.sleep(0.3)  # the stream tries to come back to a server that is not there
        wallet_process.start()
        for _ in range(3):
            await bank.credit(wallet_id, 1)
        last = credits + 9
        await wait_for_sequence(events, last, reader)
        await asyncio.sleep(0.3)  # anything repeated would arrive now
        reader.cancel()

    assert sequences(events) == list(range(first, last + 1))
    assert len({event.cursor for event in events}) == len(events)  # none repeated
    assert stream.cursor == events[-1].cursor
    assert stream.reconnects >= 1


async def test_a_cursor_the_server_refuses_ends_the_stream(
    wallet_server: RunningServer, auth_server: RunningServer
) -> None:
    async with client_of(wallet_server, auth_server) as ada:
        await log_in_new_user(ada)
        with pytest.raises(errors.InvalidCursor):
            async for _ in ada.watch_events(after_cursor="not-a-cursor"):
                pass
