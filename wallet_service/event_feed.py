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
import contextvars
import logging
from typing import Any

import psycopg
import psycopg_pool

from shared.listener import Listener, notify

log = logging.getLogger(__name__)

CHANNEL = "wallet_events"
FALLBACK_POLL_SECONDS = 1.0
NOTIFY_COALESCE_SECONDS = 0.005


class EventFeed:
    def __init__(self, database_url: str, pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        self._generation = 0
        self._changed = asyncio.Condition()
        self._notify_pending = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener = Listener(database_url, CHANNEL, self._on_notify)

    @property
    def generation(self) -> int:
        return self._generation

    def start(self) -> None:
        self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()
        for task in list(self._tasks):
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
        self._on_notify()  # this process's own watchers need no round trip
        if self._notify_pending:
            return
        self._notify_pending = True
        # A context of its own: the commit's caller may be about to run out of time, and its
        # deadline must not bound a NOTIFY that serves every later commit too.
        task = asyncio.create_task(self._notify(), context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self) -> None:
        await asyncio.sleep(NOTIFY_COALESCE_SECONDS)
        self._notify_pending = False
        try:
            async with self._pool.connection() as conn:  # autocommit: sent at once
                await notify(conn, CHANNEL)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
            log.warning("could not notify event watchers", extra={"error": str(error)})

    def _on_notify(self) -> None:
        self._generation += 1
        task = asyncio.create_task(self._wake_watchers())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake_watchers(self) -> None:
        async with self._changed:
            self._changed.notify_all()
