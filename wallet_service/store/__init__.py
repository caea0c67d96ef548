"""All of the wallet service's SQL, one module per table group. Functions take an open
connection; the caller owns the transaction. Tables live in the `wallet` schema
(migrations/wallet/)."""

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row

Conn = AsyncConnection[Any]


async def one(conn: Conn, query: str, params: Any = None) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()


async def all_rows(conn: Conn, query: str, params: Any = None) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchall()


# Transaction control is never a prepared statement: psycopg forgets every prepared statement
# when a prepared one answers ROLLBACK (as COMMIT does in a failed transaction), and in a
# pipeline that can deallocate statements it has just prepared. Rolling back is psycopg's
# own conn.rollback() (engine/runner.py), which keeps its prepared statements right.


async def send_begin(conn: Conn, *, serializable: bool) -> None:
    """Starts a transaction on an autocommit connection (queued in a pipeline)."""
    begin = "BEGIN ISOLATION LEVEL SERIALIZABLE" if serializable else "BEGIN"
    await conn.execute(begin, prepare=False)


async def send_commit(conn: Conn) -> None:
    await conn.execute("COMMIT", prepare=False)


async def send_local_timeouts(conn: Conn, lock_timeout_ms: int, statement_timeout_ms: int) -> None:
    """Bounds lock waits and statements for the rest of this transaction (sent with what
    follows: no round trip of its own in a pipeline)."""
    await conn.execute(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
        (f"{lock_timeout_ms}ms", f"{statement_timeout_ms}ms"),
    )


T = TypeVar("T")


class Pending(Generic[T]):
    """A query sent (in a pipeline, possibly not yet answered) whose rows are read later;
    reading them makes the pipeline send everything queued and wait for the answers."""

    def __init__(
        self, cursor: AsyncCursor[dict[str, Any]], convert: Callable[[list[dict[str, Any]]], T]
    ) -> None:
        self._cursor = cursor
        self._convert = convert

    async def result(self) -> T:
        return self._convert(await self._cursor.fetchall())


async def send(
    conn: Conn, query: str, params: Any, convert: Callable[[list[dict[str, Any]]], T]
) -> Pending[T]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(query, params)
    return Pending(cursor, convert)
