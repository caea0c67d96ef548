"""Operations of this process that wait for the same wallet run together, as one group.

An operation whose wallets no transaction of this process is using runs at once, alone.
Otherwise it waits; when a wallet frees, the waiting operations that touch it leave together,
in arrival order, as one group: the engine runs a group as one database transaction that takes
each row lock once, so a hot wallet serves a whole queue per commit instead of one operation.

Waiting operations keep their place: a later one never overtakes an earlier one on a wallet
they share, so none starves. Groups on disjoint wallets run side by side, up to
`max_transactions` (WALLET_MAX_TRANSACTIONS) transactions at once; when more are ready, they
share transactions too, so that under load a transaction's cost (its round trips, its commit)
is paid once for many movements on any wallets. The database's row locks still decide
between processes; this only orders what one process sends.
"""

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from uuid import UUID

from google.protobuf.message import Message
from opentelemetry.trace import SpanContext

from shared import tracing
from wallet_service.engine.operations.base import Operation

# The most operations one transaction applies: bounds how long its row locks are held.
MAX_GROUP = 64
# At shutdown, how long running groups may still take (in-flight calls had their grace).
STOP_SECONDS = 5.0


@dataclass(eq=False)
class Waiting:
    """An operation on its way: in the queue, then in a group whose runner settles `answer`."""

    operation: Operation
    call: object  # the RPC's context (engine.runner.Call)
    wallets: frozenset[UUID]
    answer: asyncio.Future[Message] = field(default_factory=asyncio.Future)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    # The call's span (tracing on): the group's transaction span links to it.
    span: SpanContext | None = field(default_factory=tracing.current_span_context)

    @property
    def key(self) -> tuple[str, str] | None:
        key = self.operation.key
        return None if key is None else (self.operation.principal.subject, key)

    def settle(self, outcome: Message | BaseException) -> None:
        if self.answer.done():
            return
        if isinstance(outcome, BaseException):
            self.answer.set_exception(outcome)
        else:
            self.answer.set_result(outcome)


RunGroup = Callable[[list[Waiting]], Awaitable[None]]
# Operations that may start together: (members, their wallets, their keys).
_Group = tuple[list[Waiting], set[UUID], set[tuple[str, str] | None]]


class Combiner:
    def __init__(self, run_group: RunGroup, max_transactions: int = 8) -> None:
        self._run_group = run_group  # settles every member's answer
        self._max_transactions = max_transactions
        self._transactions = 0  # running now, alone or as a group
        self._queue: list[Waiting] = []
        self._busy: set[UUID] = set()
        self._running: set[asyncio.Task[None]] = set()

    async def submit(
        self, waiting: Waiting, turn_seconds: float, gave_up: Callable[[], Exception]
    ) -> Message:
        """The operation's answer. It waits for its turn at most `turn_seconds`; then
        `gave_up()` is raised, and the operation was not started."""
        # Nobody retrieves the answer of a caller that went away: say it was looked at.
        waiting.answer.add_done_callback(lambda answer: answer.cancelled() or answer.exception())
        if (
            not self._queue
            and not waiting.wallets & self._busy
            and self._transactions < self._max_transactions
        ):
            await self._run_alone(waiting)  # the uncontended path: no task, no queue
            return waiting.answer.result()
        self._queue.append(waiting)
        self._dispatch()
        try:
            if not waiting.started.is_set():
                try:
                    async with asyncio.timeout(turn_seconds):
                        await waiting.started.wait()
                except TimeoutError:
                    if not waiting.started.is_set():
                        raise gave_up() from None
            return await asyncio.shield(waiting.answer)
        finally:
            if not waiting.started.is_set():  # gave up or cancelled while queued
                self._queue.remove(waiting)
                self._dispatch()

    async def _run_alone(self, waiting: Waiting) -> None:
        waiting.started.set()
        self._busy |= waiting.wallets
        self._transactions += 1
        try:
            await self._run_group([waiting])
        finally:
            self._transactions -= 1
            self._busy -= waiting.wallets
            self._dispatch()

    def _dispatch(self) -> None:
        """Starts what can run now, in arrival order, in the transactions free."""
        free = self._max_transactions - self._transactions
        if free <= 0 or not self._queue:
            return
        for members, group_wallets in _packed(self._ready_groups(), free):
            for waiting in members:
                self._queue.remove(waiting)
                waiting.started.set()
            self._busy |= group_wallets
            self._transactions += 1
            # A context of its own: a group serves several calls, none of whose deadlines
            # (or request ids) it inherits from the task that happened to dispatch it.
            task = asyncio.create_task(
                self._run(members, group_wallets), context=contextvars.Context()
            )
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _ready_groups(self) -> list[_Group]:
        """The queued operations that may start now, grouped by the wallets they share."""
        blocked = set(self._busy)  # and the wallets of earlier operations still waiting
        groups: list[_Group] = []
        for waiting in self._queue:
            wallets = waiting.wallets
            if wallets & blocked:
                blocked |= wallets
                continue
            sharing = [group for group in groups if group[1] & wallets]
            if not sharing:
                groups.append(([waiting], set(wallets), {waiting.key}))
                continue
            members, group_wallets, keys = sharing[0]
            # One group per wallet; a key once per transaction (its claim locks its row).
            if (
                len(sharing) > 1
                or len(members) >= MAX_GROUP
                or (waiting.key is not None and waiting.key in keys)
            ):
                blocked |= wallets
                continue
            members.append(waiting)
            group_wallets |= wallets
            keys.add(waiting.key)
        return groups

    async def _run(self, members: list[Waiting], wallets: set[UUID]) -> None:
        try:
            await self._run_group(members)
        finally:
            self._transactions -= 1
            self._busy -= wallets
            self._dispatch()

    async def stop(self, seconds: float = STOP_SECONDS) -> None:
        """Lets running groups finish for `seconds`, then cancels them (a group whose
        database stopped answering must not hold a shutdown)."""
        if not self._running:
            return
        _, late = await asyncio.wait(set(self._running), timeout=seconds)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _packed(groups: list[_Group], transactions: int) -> list[tuple[list[Waiting], set[UUID]]]:
    """The groups, in order, in at most `transactions` transactions: each its own while there
    are enough, else shared about evenly, up to MAX_GROUP operations and each key once. A
    group that fits nowhere waits for the next free transaction."""
    if len(groups) <= transactions:
        return [(members, wallets) for members, wallets, _ in groups]
    share = max(1, -(-sum(len(members) for members, _, _ in groups) // transactions))
    packed: list[_Group] = []
    for members, wallets, keys in groups:
        last = packed[-1] if packed else None
        if (
            last is not None
            and len(last[0]) + len(members) <= min(share, MAX_GROUP)
            and not (keys & last[2]) - {None}
        ):
            last[0].extend(members)
            last[1].update(wallets)
            last[2].update(keys)
        elif len(packed) < transactions:
            packed.append((list(members), set(wallets), set(keys)))
    return [(members, wallets) for members, wallets, _ in packed]
