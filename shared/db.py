"""One PostgreSQL connection pool per process, aware of the database's health.

The pool hands out connections that were checked before use, and fails fast while the
database is known to be down: a call gets UNAVAILABLE at once instead of waiting for a
connection that cannot come. A call never waits for a connection past its own deadline
(`shared.deadlines`): it gets UNAVAILABLE while the client still listens. Health is decided
by `DatabaseMonitor`, which probes with a fresh connection of its own, so one dead pooled
connection never marks the database down.
"""

import asyncio
import contextlib
import logging
import select
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import psycopg_pool

from shared.deadlines import answer_margin, seconds_left

log = logging.getLogger(__name__)

# The longest a call waits for a free connection when its deadline allows more.
POOL_TIMEOUT_SECONDS = 10.0
# A pool gives up re-adding a lost connection after this long and tries again on the next
# call, so a database that comes back is used at once rather than after a long backoff.
RECONNECT_TIMEOUT_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 2
# How often a database that is down is probed: recovery is noticed within this.
DOWN_PROBE_INTERVAL_SECONDS = 0.5


class DatabaseUnavailable(psycopg_pool.PoolTimeout):
    """No connection: the database is down, or none came within the pool's own timeout."""


class NoConnectionBeforeDeadline(DatabaseUnavailable):
    """No connection was free before the call's deadline (less the margin to answer): the
    pool was busy, and the database was not known to be down."""


class Pool(psycopg_pool.AsyncConnectionPool[Any]):
    """A pool that fails fast while its database is down and never outwaits a call.

    A connection that comes back broken, or a wait that times out, raises `trouble`, so
    the monitor probes the database at once; once it finds the database down, calls still
    waiting for a connection get UNAVAILABLE at once too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.trouble = asyncio.Event()
        self._down = asyncio.Event()
        self._background: set[asyncio.Future[None]] = set()
        super().__init__(*args, **kwargs)

    @property
    def database_down(self) -> bool:
        return self._down.is_set()

    @database_down.setter
    def database_down(self, down: bool) -> None:
        if down:
            self._down.set()
        else:
            self._down.clear()

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:  # noqa: ASYNC109 (the pool's own signature)
        if self.database_down:
            raise DatabaseUnavailable("the database is unavailable")
        wait = timeout if timeout is not None else self.timeout
        left = seconds_left()
        cut_by_deadline = False
        if left is not None:  # answer before the client's deadline passes
            before_deadline = max(left - answer_margin(left), 0.0)
            wait, cut_by_deadline = min(wait, before_deadline), before_deadline < wait
        # Wait for a connection, or for the monitor to find the database down (idle
        # connections may all fail their check, and new ones cannot come).
        getting = asyncio.ensure_future(self._getconn_within(wait, cut_by_deadline))
        down = asyncio.ensure_future(self._down.wait())
        try:
            await asyncio.wait((getting, down), return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                raise DatabaseUnavailable("the database is unavailable")
            return getting.result()
        except BaseException:
            # The database is down, or the call was cancelled (perhaps just as its connection
            # arrived): a connection that came or is still coming goes back to the pool.
            getting.cancel()
            getting.add_done_callback(self._give_back_unused)
            raise
        finally:
            down.cancel()

    def _give_back_unused(self, getting: "asyncio.Future[psycopg.AsyncConnection[Any]]") -> None:
        """A connection that arrived for a waiter who had already given up goes back."""
        if not getting.cancelled() and getting.exception() is None:
            self._give_back(getting.result())

    def _give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        giving_back = asyncio.ensure_future(self.putconn(conn))
        self._background.add(giving_back)
        giving_back.add_done_callback(self._background.discard)

    async def _getconn_within(
        self, wait: float, cut_by_deadline: bool
    ) -> psycopg.AsyncConnection[Any]:
        """A connection that passed `_still_works`; dead ones are handed back (the pool
        replaces them) and the next is tried at once, within the same wait."""
        deadline = time.monotonic() + wait
        while True:
            try:
                conn = await super().getconn(max(deadline - time.monotonic(), 0.0))
            except psycopg_pool.PoolTimeout:
                self.trouble.set()  # busy or down: the monitor looks at once
                failure = NoConnectionBeforeDeadline if cut_by_deadline else DatabaseUnavailable
                raise failure(f"no database connection within {wait:.3f} s") from None
            try:
                works = await self._still_works(conn)
            except BaseException:  # cancelled during the check: the connection goes back
                self._give_back(conn)
                raise
            if works:
                return conn
            self.trouble.set()
            await self.putconn(conn)

    async def putconn(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn.broken:
            self.trouble.set()
        await super().putconn(conn)

    async def _still_works(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Checks a connection on checkout without a round trip: an idle connection has
        nothing to read, so a readable socket means the server said something (a restart
        or termination notice, or EOF). Only then does a query find out if it still works."""
        if conn.closed or conn.broken:
            return False
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
        if not readable:
            return True
        try:
            await self.check_connection(conn)
        except psycopg.Error:
            return False
        return True


async def open_pool(
    database_url: str,
    *,
    min_size: int,
    max_size: int,
    name: str,
    configure: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
    statement_timeout_seconds: float | None = None,
    autocommit: bool = False,
) -> Pool:
    """Opens the pool and waits for its first connections, so a bad URL fails at start-up."""
    pool = Pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        timeout=POOL_TIMEOUT_SECONDS,
        configure=configure,
        reconnect_timeout=RECONNECT_TIMEOUT_SECONDS,
        kwargs={**session_options(statement_timeout_seconds), "autocommit": autocommit},
    )
    await pool.open(wait=True, timeout=15.0)
    return pool


def session_options(statement_timeout_seconds: float | None) -> dict[str, str]:
    """Connection parameters that bound every statement (lock waits included), so that no
    database call can hang a request; a transaction may still shorten it (SET LOCAL)."""
    # A server that vanishes without a reset (a partition, a host gone) is noticed within
    # about half a minute instead of the kernel's two hours.
    keepalives = {
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
        "tcp_user_timeout": "30000",
    }
    if statement_timeout_seconds is None:
        return keepalives
    milliseconds = max(1, round(statement_timeout_seconds * 1000))
    return {**keepalives, "options": f"-c statement_timeout={milliseconds}"}


async def database_is_reachable(database_url: str) -> bool:
    """A fresh connection answers a query (the pool's connections are not used)."""
    try:
        async with await psycopg.AsyncConnection.connect(
            database_url, connect_timeout=PROBE_TIMEOUT_SECONDS, autocommit=True
        ) as conn:
            await conn.execute("SELECT 1")
        return True
    except (psycopg.Error, OSError):
        return False


HealthListener = Callable[[bool], Awaitable[None]]


class DatabaseMonitor:
    """Decides whether the database is up, and tells the pool and a listener (health).

    Probes every `interval` seconds while up and every half second while down, and at once
    when the pool meets trouble. On recovery the pool drops its dead idle connections
    before calls use them again.
    """

    def __init__(self, pool: Pool, interval: float, on_change: HealthListener) -> None:
        self._pool = pool
        self._interval = interval
        self._on_change = on_change
        self.up = True

    async def probe(self) -> bool:
        assert isinstance(self._pool.conninfo, str), "open_pool takes a database URL"
        up = await database_is_reachable(self._pool.conninfo)
        if up != self.up:
            log.warning("database is up" if up else "database is down")
            if up:
                await self._pool.check()
            self._pool.database_down = not up
            self.up = up
        await self._on_change(up)
        return up

    async def run(self) -> None:
        while True:
            interval = self._interval if self.up else DOWN_PROBE_INTERVAL_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pool.trouble.wait(), interval)
            self._pool.trouble.clear()
            started = time.monotonic()
            try:
                await self.probe()
            except Exception:
                log.exception("database probe failed")
            # Never probe in a tight loop, however often calls cry wolf.
            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
