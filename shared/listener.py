"""PostgreSQL LISTEN, kept up: one dedicated connection that calls back on every notification
of a channel, and reconnects when it is lost.

The callback also runs on each (re)connection, because notifications sent while nobody
listened are gone: whoever relies on them should look again then.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 0.5


class Listener:
    def __init__(self, database_url: str, channel: str, on_notify: Callable[[], None]) -> None:
        self._database_url = database_url
        self._channel = channel
        self._on_notify = on_notify
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._database_url, autocommit=True
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._on_notify()
                    async for _ in conn.notifies():
                        self._on_notify()
            except (psycopg.Error, OSError) as error:
                log.warning(
                    "listener lost its connection",
                    extra={"channel": self._channel, "error": str(error)},
                )
            await asyncio.sleep(RECONNECT_SECONDS)


async def notify(conn: psycopg.AsyncConnection[object], channel: str) -> None:
    """Queues a notification, sent when `conn`'s transaction commits."""
    await conn.execute("SELECT pg_notify(%s, '')", (channel,))
