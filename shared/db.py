"""One PostgreSQL connection pool per process."""

import psycopg_pool


async def open_pool(
    database_url: str,
    *,
    min_size: int,
    max_size: int,
    name: str,
    statement_timeout_seconds: float | None = None,
) -> psycopg_pool.AsyncConnectionPool:
    """Opens the pool and waits for its first connections, so a bad URL fails at start-up."""
    pool = psycopg_pool.AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        timeout=10.0,  # seconds a call waits for a free connection before UNAVAILABLE
        kwargs=session_options(statement_timeout_seconds),
    )
    await pool.open(wait=True, timeout=15.0)
    return pool


def session_options(statement_timeout_seconds: float | None) -> dict[str, str]:
    """Connection parameters that bound every statement (lock waits included), so that no
    database call can hang a request; a transaction may still shorten it (SET LOCAL)."""
    if statement_timeout_seconds is None:
        return {}
    milliseconds = max(1, round(statement_timeout_seconds * 1000))
    return {"options": f"-c statement_timeout={milliseconds}"}


async def database_is_reachable(pool: psycopg_pool.AsyncConnectionPool) -> bool:
    try:
        async with pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
        return True
    except Exception:
        return False
