"""The services' connection pool (shared/db.py) under cancelled calls."""

import asyncio
import contextlib

from shared.db import open_pool


async def test_calls_cancelled_while_getting_a_connection_leak_none(database_url: str) -> None:
    # A call cancelled just as its connection arrives (found by the bank workload's cancel
    # scenario: the pool ran dry and every later call answered UNAVAILABLE). One connection
    # only, so a single leak shows; cancellation lands at every point of the hand-over.
    pool = await open_pool(database_url, min_size=1, max_size=1, name="cancel-test")
    try:
        for spins in range(6):
            for _ in range(10):
                getting = asyncio.ensure_future(pool.getconn())
                for _ in range(spins):
                    await asyncio.sleep(0)
                getting.cancel()
                with contextlib.suppress(asyncio.CancelledError):  # the getter's, not ours
                    await pool.putconn(await getting)
            async with pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
    finally:
        await pool.close()
