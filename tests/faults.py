"""Fault injectors for the bank workload (tests/bank.py): each runs in the background while the
clients load the services, and counts what it did.

    faults = Faults()
    async with faults.every(1.0, kill_backends(database_url, faults)):
        await bank.load(10)
    print(faults.summary())
"""

import asyncio
import collections
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable

from tests.bank import CHECKER
from tests.databases import terminate_backends
from tests.private_postgres import PrivatePostgres, StopMode
from tests.processes import ServiceProcess

Fault = Callable[[], Awaitable[None]]


class Faults:
    """What the injectors did: a count per kind of fault."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        # What went wrong while injecting (a server that did not come back, an unclean exit).
        self.problems: list[str] = []

    def add(self, what: str, times: int = 1) -> None:
        self.counts[what] += times

    def summary(self) -> str:
        return ", ".join(f"{what} {count}" for what, count in self.counts.items()) or "none"

    @contextlib.asynccontextmanager
    async def every(self, seconds: float, fault: Fault) -> AsyncIterator[None]:
        """Runs `fault` every `seconds` (jittered by a fifth) until the block ends; a fault that
        is still running then is awaited, so the block ends with the system whole again."""
        stop = asyncio.Event()

        async def repeat() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), seconds * random.uniform(0.8, 1.2))
                if stop.is_set():
                    return
                try:
                    await fault()
                except Exception as error:
                    self.problems.append(f"{type(error).__name__}: {error}")

        task = asyncio.create_task(repeat())
        try:
            yield
        finally:
            stop.set()
            await task


def kill_backends(database_url: str, faults: Faults) -> Fault:
    """Terminates every connection to the URL's database (but the bank's checks)."""

    async def fault() -> None:
        ended = await asyncio.to_thread(terminate_backends, database_url, sparing=CHECKER)
        faults.add("backend kills")
        faults.add("connections terminated", ended)

    return fault


def kill_and_restart(process: ServiceProcess, faults: Faults) -> Fault:
    """SIGKILLs the service (a crash), starts it again and waits until it serves."""

    async def fault() -> None:
        process.kill()
        faults.add(f"{process.name} SIGKILLs")
        process.start()
        await process.wait_serving()

    return fault


def terminate_and_restart(process: ServiceProcess, faults: Faults) -> Fault:
    """SIGTERMs the service during load, waits for its graceful exit (a problem unless it
    exits 0), starts it again and waits until it serves."""

    async def fault() -> None:
        process.terminate()
        faults.add(f"{process.name} SIGTERMs")
        code = await process.wait_exit(60)
        if code != 0:
            faults.problems.append(f"{process.name} exited with {code} after SIGTERM")
            process.kill()
        process.start()
        await process.wait_serving()

    return fault


def restart_postgres(server: PrivatePostgres, mode: StopMode, faults: Faults) -> Fault:
    """Restarts the (private) PostgreSQL server: `fast` or `immediate` (a crash)."""

    async def fault() -> None:
        await asyncio.to_thread(server.restart, mode)
        faults.add(f"postgres {mode} restarts")

    return fault
