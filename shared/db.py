"""One PostgreSQL connection pool per process."""

import psycopg_pool


async def open_pool(
    database_url: str, *, min_size: int, max_size: int, name: str
) -> psycopg_pool.AsyncConnectionPool:
    """Opens the pool and waits for its first connections, so a bad URL fails at start-up."""
    pool = psycopg_pool.AsyncConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        timeout=10.0,  # seconds a call waits for a free connection before UNAVAILABLE
    )
    await pool.open(wait=True, timeout=15.0)
    return pool


async def database_is_reachable(pool: psycopg_pool.AsyncConnectionPool) -> bool:
    try:
        async with pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
        return True
    except Exception:
        return False
