"""The combiner (wallet_service/engine/combiner.py): operations waiting for the same wallet
leave together as one group, in arrival order; none overtakes an earlier one on a wallet they
share; one that gives up while waiting leaves no trace."""

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from shared.errors import ServiceError, deadline_exceeded
from wallet_service.engine.combiner import Combiner, Waiting


def waiting(*wallets: uuid.UUID, key: str | None = None) -> Waiting:
    operation: Any = SimpleNamespace(
        key=key or str(uuid.uuid4()), principal=SimpleNamespace(subject="u")
    )
    return Waiting(operation, call=None, wallets=frozenset(wallets))


class Recorder:
    """A group runner that records its groups and finishes each when told."""

    def __init__(self) -> None:
        self.groups: list[list[Waiting]] = []
        self.release = asyncio.Event()

    async def __call__(self, members: list[Waiting]) -> None:
        self.groups.append(members)
        number = len(self.groups)
        await self.release.wait()
        for member in members:
            member.settle(SimpleNamespace(group=number))  # type: ignore[arg-type]


def gave_up() -> ServiceError:
    return deadline_exceeded("DEADLINE_EXCEEDED", "waited too long")


async def submit(combiner: Combiner, item: Waiting, seconds: float = 5) -> Any:
    return await combiner.submit(item, seconds, gave_up)


async def test_operations_waiting_for_a_wallet_leave_together_in_arrival_order() -> None:
    runner = Recorder()
    combiner = Combiner(runner)
    hot, a, b, c = (uuid.uuid4() for _ in range(4))
    first = asyncio.create_task(submit(combiner, waiting(hot)))  # runs at once, alone
    await asyncio.sleep(0)
    queued = [waiting(hot, a), waiting(hot), waiting(b, hot), waiting(c)]
    tasks = [asyncio.create_task(submit(combiner, item)) for item in queued]
    await asyncio.sleep(0.01)
    # The one on wallet c did not wait: its wallet was free.
    assert [len(group) for group in runner.groups] == [1, 1]
    assert runner.groups[1] == [queued[3]]
    runner.release.set()
    answers = await asyncio.gather(first, *tasks)
    assert runner.groups[2] == queued[:3]  # the three on the hot wallet, in order
    assert [answer.group for answer in answers] == [1, 3, 3, 3, 2]


async def test_a_later_operation_never_overtakes_an_earlier_one_on_a_shared_wallet() -> None:
    runner = Recorder()
    combiner = Combiner(runner)
    a, b = uuid.uuid4(), uuid.uuid4()
    holder = asyncio.create_task(submit(combiner, waiting(a)))
    await asyncio.sleep(0)
    needs_both = asyncio.create_task(submit(combiner, waiting(a, b)))
    await asyncio.sleep(0)
    needs_b = asyncio.create_task(submit(combiner, waiting(b)))  # b is free, but promised
    await asyncio.sleep(0.01)
    assert len(runner.groups) == 1
    runner.release.set()
    await asyncio.gather(holder, needs_both, needs_b)
    assert [len(group) for group in runner.groups] == [1, 2]


async def test_one_key_runs_once_per_group() -> None:
    runner = Recorder()
    combiner = Combiner(runner)
    wallet = uuid.uuid4()
    holder = asyncio.create_task(submit(combiner, waiting(wallet)))
    await asyncio.sleep(0)
    twins = [asyncio.create_task(submit(combiner, waiting(wallet, key="same"))) for _ in range(2)]
    await asyncio.sleep(0.01)
    runner.release.set()
    await asyncio.gather(holder, *twins)
    assert [len(group) for group in runner.groups] == [1, 1, 1]


async def test_an_operation_that_gives_up_while_waiting_leaves_no_trace() -> None:
    runner = Recorder()
    combiner = Combiner(runner)
    first, second = sorted([uuid.uuid4(), uuid.uuid4()])
    holder = asyncio.create_task(submit(combiner, waiting(first)))
    await asyncio.sleep(0)
    with pytest.raises(ServiceError) as raised:
        await submit(combiner, waiting(first, second), seconds=0.05)
    assert raised.value.reason == "DEADLINE_EXCEEDED"
    runner.release.set()
    await holder
    async with asyncio.timeout(1):
        await submit(combiner, waiting(first, second))  # both wallets free again
    assert [len(group) for group in runner.groups] == [1, 1]


async def test_when_every_transaction_is_taken_operations_on_any_wallets_share_the_next() -> None:
    runner = Recorder()
    combiner = Combiner(runner, max_transactions=2)
    running = [asyncio.create_task(submit(combiner, waiting(uuid.uuid4()))) for _ in range(2)]
    await asyncio.sleep(0)
    # Four more on wallets nobody uses; one shares its key with an earlier one.
    c, d, e, f = (
        waiting(uuid.uuid4(), key="k"),
        waiting(uuid.uuid4(), key="k"),
        waiting(uuid.uuid4()),
        waiting(uuid.uuid4()),
    )
    queued = [asyncio.create_task(submit(combiner, item)) for item in (c, d, e, f)]
    await asyncio.sleep(0.01)
    assert [len(group) for group in runner.groups] == [1, 1]  # no transaction free
    runner.release.set()
    await asyncio.gather(*running, *queued)
    # The first free transaction takes them all in arrival order, but a key once.
    assert runner.groups[2:] == [[c, e, f], [d]]
