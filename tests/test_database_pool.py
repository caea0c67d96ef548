"""The services' connection pool (shared/db.py) under cancelled calls and short deadlines."""

import asyncio
import contextlib

import grpc
import pytest

from shared.db import DatabaseUnavailable, NoConnectionBeforeDeadline, open_pool
from shared.deadlines import set_call_deadline
from shared.interceptors import database_error


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


async def test_a_busy_pool_is_a_deadline_exceeded_not_a_database_unavailable(
    database_url: str,
) -> None:
    """When every connection is in use until a call's deadline, the database is fine: the
    call ran out of time (DEADLINE_EXCEEDED), as it does waiting for a row lock."""
    pool = await open_pool(database_url, min_size=1, max_size=1, name="busy-test")
    try:
        async with pool.connection():  # the only connection, busy
            set_call_deadline(0.2)
            with pytest.raises(NoConnectionBeforeDeadline) as busy:
                await pool.getconn()
            set_call_deadline(None)
            with pytest.raises(DatabaseUnavailable) as unavailable:
                await pool.getconn(timeout=0.2)  # the pool's own bound, no deadline
        assert not pool.database_down
        refusal = database_error(busy.value)
        assert refusal is not None and refusal.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert not isinstance(unavailable.value, NoConnectionBeforeDeadline)
        refusal = database_error(unavailable.value)
        assert refusal is not None and refusal.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await pool.close()
