"""`make bench` (`python -m tests.bench`): see tests/bench/__init__.py and docs/performance.md."""

import asyncio
import os
import shutil
import sys
import time
import uuid
from datetime import UTC, datetime

import psycopg

from auth_service import repository
from auth_service.admin import create_service_account
from auth_service.passwords import cost_of
from tests.bench import references, report
from tests.bench.cpu import Sample, Watched, sample, usage
from tests.bench.load import HISTORY_WALLETS, OWNER_SCOPE, Account, LoadClient, LoadProcess, Window
from tests.bench.load import split as split_evenly
from tests.bench.results import Measurement
from tests.bench.scenarios import SCENARIOS
from tests.bench.settings import BenchSettings, load
from tests.bench.system import System, connections_per_worker, running_system

LOGIN_USERS = 8
# The load processes reconnect, at most this many times, until each service's workers hold
# about as many of their connections (the kernel hashes each connection to one worker).
SPREAD_ATTEMPTS = 20
# Tokens are renewed before a scenario when they would expire within its time plus this.
TOKEN_MARGIN_SECONDS = 120


async def bench(settings: BenchSettings) -> dict[str, object]:
    run = uuid.uuid4().hex[:8]
    load_at_start = os.getloadavg()
    log_dir = settings.output / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    started = time.monotonic()
    async with running_system(settings, log_dir) as system:
        print(
            f"bench: {system.where}; auth {system.auth_address}, wallet {system.wallet_address}",
            flush=True,
        )
        if any(name != "bcrypt" for name in settings.references):
            await asyncio.to_thread(references.prepare, system.reference_url, settings.wallets)
        client = LoadClient(
            settings.processes, system.auth_address, system.wallet_address, settings.channels
        )
        try:
            cost = await _populate(settings, system, client, run)
            spread = await _spread_connections(system, client)
            print(f"bench: set up in {time.monotonic() - started:.0f} s; {spread}", flush=True)
            scenarios, refs = await _measure(settings, system, client, cost)
        finally:
            client.close()
    seconds = time.monotonic() - started
    return report.document(settings, system, scenarios, refs, seconds, load_at_start, spread)


async def _populate(
    settings: BenchSettings, system: System, client: LoadClient, run: str
) -> int | None:
    """Accounts, wallets, funds, history and users for the chosen scenarios; the bcrypt cost
    of the users' hashes (the auth service's), when Login is measured."""
    wanted = set(settings.scenarios)
    payments, hot_owner = [
        Account(*await create_service_account(system.database_url, f"bench-{run}-{name}", scopes))
        for name, scopes in (("payments", ["wallet:credit"]), ("hot", [OWNER_SCOPE]))
    ]
    here = LoadProcess(-1, system.auth_address, system.wallet_address, 1)
    try:
        hot = await here.hot_wallet(run, payments, hot_owner)
        emails = await here.register_users(run, LOGIN_USERS) if "login" in wanted else []
    finally:
        await here.close()
    names = [f"bench-{run}-{i}" for i in range(settings.wallets if wanted - {"login"} else 0)]
    fund = bool(wanted & {"debit-uniform", "transfer-uniform", "hold-capture"})
    history = split_evenly(HISTORY_WALLETS if "list-transactions" in wanted else 0, client.count)
    shares = [names[i :: client.count] for i in range(client.count)]
    created = await client.each(
        "populate",
        [
            (run, system.database_url, share, payments, hot_owner, fund, history[i])
            for i, share in enumerate(shares)
        ],
    )
    await client.all("share", [wallet for part in created for wallet in part], hot, emails)
    if not emails:
        return None
    async with await psycopg.AsyncConnection.connect(system.database_url) as conn:
        user = await repository.user_by_email(conn, emails[0])
    assert user is not None
    return cost_of(user.password_hash)


async def _spread_connections(system: System, client: LoadClient) -> str:
    """Reconnects the load client until each service's workers have an even share of its
    connections (within an eighth of them, or 2); says how they are spread."""
    await client.all("connect")
    for attempt in range(1, SPREAD_ATTEMPTS + 1):
        split = {
            name: connections_per_worker(pid, port) for name, (pid, port) in system.services.items()
        }
        even = all(max(c) - min(c) <= max(2, sum(c) // 8) for c in split.values() if c)
        if even or attempt == SPREAD_ATTEMPTS:
            break
        await client.all("reconnect")
    shares = ", ".join(f"{name} {'/'.join(map(str, c))}" for name, c in split.items())
    return f"connections per worker: {shares or 'unknown'}" + ("" if even else " (uneven)")


async def _measure(
    settings: BenchSettings, system: System, client: LoadClient, cost: int | None
) -> tuple[list[Measurement], dict[str, Measurement]]:
    """Each scenario, then the references it is compared with that have not run yet, so that
    a scenario and its references run close together in time."""
    measured = []
    refs: dict[str, Measurement] = {}
    for name in settings.scenarios:
        await client.all(
            "refresh_tokens", settings.warmup + settings.seconds + TOKEN_MARGIN_SECONDS
        )
        measured.append(await _scenario(settings, system, client, name))
        print(report.progress_line(measured[-1]), flush=True)
        for reference in SCENARIOS[name].compared_with:
            if reference in settings.references and reference not in refs:
                refs[reference] = await _reference(settings, system, reference, cost)
                print(report.progress_line(refs[reference]), flush=True)
    for reference in settings.references:
        if reference not in refs:
            refs[reference] = await _reference(settings, system, reference, cost)
            print(report.progress_line(refs[reference]), flush=True)
    return measured, refs


async def _scenario(
    settings: BenchSettings, system: System, client: LoadClient, name: str
) -> Measurement:
    limit = SCENARIOS[name].max_in_flight or settings.in_flight
    in_flight = min(settings.in_flight, limit)
    start = time.monotonic() + 0.5
    windows = [
        (Window(name, share, start, settings.warmup, settings.seconds),)
        for share in split_evenly(in_flight, client.count)
    ]
    cpu = asyncio.create_task(
        _sample_window(system.watched, start + settings.warmup, settings.seconds)
    )
    parts: list[Measurement] = await client.each("run", windows)
    before, after = await cpu
    errors: dict[str, int] = {}
    for part in parts:
        for error, count in part.errors.items():
            errors[error] = errors.get(error, 0) + count
    return Measurement(
        name,
        settings.seconds,
        done=sum(part.done for part in parts),
        latencies=[latency for part in parts for latency in part.latencies],
        errors=errors,
        in_flight=in_flight,
        client_cpu_seconds=sum(part.client_cpu_seconds or 0.0 for part in parts),
        cpu=usage(before, after),
    )


async def _sample_window(
    watched: list[Watched], begin: float, seconds: float
) -> tuple[Sample, Sample]:
    await asyncio.sleep(max(0.0, begin - time.monotonic()))
    before = sample(watched)
    await asyncio.sleep(max(0.0, begin + seconds - time.monotonic()))
    return before, sample(watched)


async def _reference(
    settings: BenchSettings, system: System, name: str, cost: int | None
) -> Measurement:
    if name == "bcrypt":
        if cost is None:
            cost = system.bcrypt_cost or 12
        return await references.run_bcrypt(cost, settings.warmup, settings.seconds)
    return await references.run_pgbench(
        name,
        system.reference_url,
        settings.in_flight,
        settings.warmup,
        settings.seconds,
        system.watched,
        settings.wallets,
    )


def main() -> int:
    settings = load()
    print(
        f"bench: {len(settings.scenarios)} scenario(s), {len(settings.references)} reference(s),"
        f" {settings.seconds:g} s each after {settings.warmup:g} s of warm-up,"
        f" {settings.in_flight} in flight over {settings.processes} load process(es)",
        flush=True,
    )
    document = asyncio.run(bench(settings))
    print()
    print(report.tables(document))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    paths = report.save(document, settings.output, stamp)
    print("\n" + "\n".join(f"wrote {path}" for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
