"""All of the wallet service's SQL, one module per table group. Functions take an open
connection; the caller owns the transaction. Tables live in the `wallet` schema
(migrations/wallet/)."""

from typing import Any

from psycopg import AsyncConnection
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


async def set_local_timeouts(conn: Conn, lock_timeout_ms: int, statement_timeout_ms: int) -> None:
    """Bounds lock waits and statements for the rest of this transaction."""
    await conn.execute(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
        (f"{lock_timeout_ms}ms", f"{statement_timeout_ms}ms"),
    )
