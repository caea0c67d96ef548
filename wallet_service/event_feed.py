"""Wakes event watchers when new events may be ready, woken by PostgreSQL LISTEN/NOTIFY.

Each process keeps one listening connection (not one per stream) and bumps a generation
counter on every notification; a watcher waits for the counter to move past the one it
read with, or for a timeout. A process that committed events sends one NOTIFY for all that
committed within a few milliseconds (after the commit, on its own connection), so the money
path pays nothing for it. Should a notification be lost (the notifier died between commit
and NOTIFY, or the listening connection was down), watchers still look again on their own
within `FALLBACK_POLL_SECONDS`.
"""

import asyncio
import contextlib
import logging
from typing import Any

import psycopg
import psycopg_pool

log = logging.getLogger(__name__)

CHANNEL = "wallet_events"
FALLBACK_POLL_SECONDS = 1.0
NOTIFY_COALESCE_SECONDS = 0.005
RECONNECT_SECONDS = 0.5


class EventFeed:
    def __init__(self, database_url: str, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        self._database_url = database_url
        self._pool = pool
        self._generation = 0
        self._changed = asyncio.Condition()
        self._notify_pending = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None

    @property
    def generation(self) -> int:
        return self._generation

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        for task in [self._listener, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def wait(self, seen_generation: int, seconds: float) -> None:
        """Returns once the generation moves past `seen_generation`, or after `seconds`."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._generation != seen_generation),
                    min(seconds, FALLBACK_POLL_SECONDS),
                )

    def events_committed(self) -> None:
        """Called after a commit that wrote events: one NOTIFY soon, for all such commits."""
        if self._notify_pending:
            return
        self._notify_pending = True
        task = asyncio.create_task(self._notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self) -> None:
        await asyncio.sleep(NOTIFY_COALESCE_SECONDS)
        self._notify_pending = False
        try:
            async with self._pool.connection() as conn:
                await conn.execute(f"NOTIFY {CHANNEL}")
                await conn.commit()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
            log.warning("could not notify event watchers", extra={"error": str(error)})
        await self._bump()  # this process's own watchers need no round trip

    async def _bump(self) -> None:
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._database_url, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await self._bump()  # events may have come while not listening
                    async for _ in conn.notifies():
                        await self._bump()
            except (psycopg.Error, OSError) as error:
                log.warning("event listener lost its connection", extra={"error": str(error)})
            await asyncio.sleep(RECONNECT_SECONDS)
