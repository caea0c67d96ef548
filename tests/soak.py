"""`make soak`: the bank workload (tests/bank.py) for minutes, one fault scenario at a time.

Each scenario gets a fresh private PostgreSQL (tests/private_postgres.py), the services as
child processes (tests/processes.py), the workload and one fault injector (tests/faults.py).
It prints, per scenario, the calls, their answers and outcomes, the faults injected and every
check; it exits 1 if any check fails.

    make soak                                       # every scenario, SOAK_SECONDS in all
    make soak SOAK_SECONDS=600 SOAK_SCENARIOS="wallet-kill postgres-immediate"
    .venv/bin/python -m tests.soak --seconds 60 backends
    make soak SOAK_DATABASE_URL=postgresql://user@host:5432/postgres   # on another server

With SOAK_DATABASE_URL, each scenario runs in a throwaway database on that server (a
PostgreSQL-compatible engine, for instance) and the scenarios that restart PostgreSQL are left
out. The services' logs are kept in .data/soak/<scenario>/ for diagnosis.
"""

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.migrations import SERVICES, migrate
from tests.bank import CUT, Bank, BankConfig, BankReport, Check
from tests.databases import throwaway_database
from tests.faults import (
    Fault,
    Faults,
    kill_and_restart,
    kill_backends,
    restart_postgres,
    terminate_and_restart,
)
from tests.private_postgres import PrivatePostgres, private_postgres
from tests.processes import ServiceProcess, running_services

LOGS = Path(__file__).resolve().parent.parent / ".data" / "soak"
SETTLE_SECONDS = 30
# Short-lived tokens, so that a soak of minutes renews them many times; a quick health check.
SERVICE_SETTINGS = {"ACCESS_TOKEN_TTL_SECONDS": "60", "HEALTH_CHECK_INTERVAL_SECONDS": "1"}


@dataclass
class Target:
    """What a fault can hit in a scenario."""

    database_url: str
    postgres: PrivatePostgres | None  # None on a server given with --database-server
    wallets: list[ServiceProcess]
    faults: Faults


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    fault: Callable[[Target], Fault] | None = None
    every: float = 1.0  # seconds between two faults
    restarts_postgres: bool = False  # needs a private PostgreSQL
    wallet_instances: int = 1
    cancel_share: float = 0.0
    # False where the fault is a graceful shutdown: in-flight calls must finish, none cut.
    calls_may_be_cut: bool = True


SCENARIOS = [
    Scenario("none", "no fault"),
    Scenario(
        "backends",
        "every connection to the database terminated every second",
        lambda t: kill_backends(t.database_url, t.faults),
        every=1,
    ),
    Scenario(
        "wallet-kill",
        "the wallet service SIGKILLed every ~8 s and started again",
        lambda t: kill_and_restart(t.wallets[0], t.faults),
        every=8,
    ),
    Scenario(
        "postgres-fast",
        "PostgreSQL restarted (fast shutdown) every ~10 s",
        lambda t: restart_postgres(t.postgres, "fast", t.faults),
        every=10,
        restarts_postgres=True,
    ),
    Scenario(
        "postgres-immediate",
        "PostgreSQL restarted (immediate shutdown: a crash) every ~10 s",
        lambda t: restart_postgres(t.postgres, "immediate", t.faults),
        every=10,
        restarts_postgres=True,
    ),
    Scenario("cancels", "clients cancel 30% of their calls after 1-20 ms", cancel_share=0.3),
    Scenario(
        "two-instances",
        "two wallet instances; each attempt goes to the other one than the last",
        wallet_instances=2,
    ),
    Scenario(
        "sigterm",
        "the wallet service SIGTERMed during load every ~10 s, started again once it exits",
        lambda t: terminate_and_restart(t.wallets[0], t.faults),
        every=10,
        calls_may_be_cut=False,
    ),
]


@dataclass
class Result:
    scenario: Scenario
    report: BankReport
    faults: Faults
    seconds: float

    @property
    def passed(self) -> bool:
        return self.report.passed and not self.faults.problems


def run_scenario(scenario: Scenario, seconds: float, server_url: str | None) -> Result:
    started = time.monotonic()
    log_dir = LOGS / scenario.name
    shutil.rmtree(log_dir, ignore_errors=True)
    with _database(server_url) as (database_url, postgres):
        for service in SERVICES:
            migrate(database_url, service)
        report, faults = asyncio.run(_load(scenario, seconds, postgres, database_url, log_dir))
    return Result(scenario, report, faults, time.monotonic() - started)


@contextlib.contextmanager
def _database(server_url: str | None) -> Iterator[tuple[str, PrivatePostgres | None]]:
    """A fresh database: on a private PostgreSQL, or a throwaway one on `server_url`."""
    if server_url is None:
        with private_postgres() as postgres:
            yield postgres.create_database("wallet"), postgres
    else:
        with throwaway_database(server_url) as database_url:
            yield database_url, None


async def _load(
    scenario: Scenario,
    seconds: float,
    postgres: PrivatePostgres | None,
    database_url: str,
    log_dir: Path,
) -> tuple[BankReport, Faults]:
    faults = Faults()
    async with running_services(
        database_url, log_dir, scenario.wallet_instances, **SERVICE_SETTINGS
    ) as (auth, wallets):
        config = BankConfig(cancel_share=scenario.cancel_share, snapshot_interval=3.0)
        addresses = [wallet.address for wallet in wallets]
        bank = await Bank.open(config, auth.address, addresses, database_url)
        try:
            if scenario.fault is None:
                await bank.load(seconds)
            else:
                fault = scenario.fault(Target(database_url, postgres, wallets, faults))
                async with faults.every(scenario.every, fault):
                    await bank.load(seconds)
            await bank.settle(SETTLE_SECONDS)
            if bank.cancels:
                faults.add("client cancels", bank.cancels)
            report = await bank.check()
            if not scenario.calls_may_be_cut:
                report.checks.append(_no_call_cut(report))
            return report, faults
        finally:
            await bank.close()


def _no_call_cut(report: BankReport) -> Check:
    cut = sum(answer == CUT for op in report.operations for answer in op.attempts)
    return Check("graceful shutdown: no call cut in flight", not cut, f"{cut} calls cut")


def print_result(result: Result) -> None:
    scenario = result.scenario
    verdict = "PASSED" if result.passed else "FAILED"
    print(f"\n== {scenario.name}: {scenario.description} ({result.seconds:.0f} s) {verdict}")
    print(result.report.summary())
    print(f"faults: {result.faults.summary()}")
    for problem in result.faults.problems:
        print(f"  FAIL fault injection: {problem}")
    if not result.passed:
        print(f"service logs: {LOGS / scenario.name}")
    sys.stdout.flush()


def print_table(results: list[Result]) -> None:
    print("\n| scenario | operations | attempts | applied | refused | unknown | faults | checks |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for result in results:
        operations = result.report.operations
        outcome = [op.outcome for op in operations]
        passed = len(result.report.checks) - len(result.report.failed)
        failed = len(result.report.failed) + len(result.faults.problems)
        print(
            f"| {result.scenario.name} | {len(operations)} |"
            f" {sum(len(op.attempts) for op in operations)} | {outcome.count('applied')} |"
            f" {outcome.count('refused')} | {outcome.count('pending')} |"
            f" {result.faults.summary()} | {passed} passed, {failed} failed |"
        )


def main(argv: list[str] | None = None) -> int:
    names = [scenario.name for scenario in SCENARIOS]
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(names))
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("SOAK_SECONDS") or 300),
        help="load time of the whole soak, shared by the scenarios (SOAK_SECONDS, 300)",
    )
    parser.add_argument(
        "--database-server",
        default=os.environ.get("SOAK_DATABASE_URL") or None,
        help="run on this server (a throwaway database) instead of a private PostgreSQL;"
        " the scenarios that restart PostgreSQL are left out (SOAK_DATABASE_URL)",
    )
    args = parser.parse_args(argv)
    if unknown := set(args.scenarios) - set(names):
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {names}")
    chosen = [
        scenario
        for scenario in SCENARIOS
        if scenario.name in (args.scenarios or names)
        and not (args.database_server and scenario.restarts_postgres)
    ]
    if not chosen:
        parser.error("no scenario left to run")
    seconds = args.seconds / len(chosen)
    print(f"soak: {len(chosen)} scenario(s), {seconds:.0f} s of load each, then settling")
    results = []
    for scenario in chosen:
        results.append(run_scenario(scenario, seconds, args.database_server))
        print_result(results[-1])
    print_table(results)
    failed = [result.scenario.name for result in results if not result.passed]
    print(f"\nsoak {'FAILED: ' + ', '.join(failed) if failed else 'passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
