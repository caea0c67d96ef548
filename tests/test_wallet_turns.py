"""Turns on a wallet within one process (wallet_service.engine.runner.WalletTurns)."""

import asyncio
import uuid

import pytest

from shared.errors import ServiceError
from wallet_service.engine.runner import Timeouts, WalletTurns


def timeouts(seconds: float) -> Timeouts:
    return Timeouts(seconds, 1000, 1000, turn_set_by_deadline=True, lock_set_by_deadline=True)


async def test_a_transfer_that_gives_up_on_its_first_wallet_leaves_no_trace() -> None:
    # The transfer counts itself on both wallets, waits for the first one (held by a debit),
    # and gives up before it ever reaches the second: found by the bank workload as INTERNAL.
    turns = WalletTurns()
    first, second = sorted([uuid.uuid4(), uuid.uuid4()])
    debit_holds = asyncio.Event()
    release = asyncio.Event()

    async def debit() -> None:
        async with turns.take([first], timeouts(5)):
            debit_holds.set()
            await release.wait()

    holder = asyncio.create_task(debit())
    await debit_holds.wait()
    with pytest.raises(ServiceError) as gave_up:
        async with turns.take([first, second], timeouts(0.05)):
            pass
    assert gave_up.value.reason == "DEADLINE_EXCEEDED"
    release.set()
    await holder
    async with asyncio.timeout(1), turns.take([first, second], timeouts(1)):
        pass  # both wallets free again
