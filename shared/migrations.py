"""Applies a service's plain numbered SQL migrations (`migrations/<service>/NNNN_name.sql`).

Each file runs in its own transaction and is recorded, with its SHA-256, in
`<schema>.schema_migrations`. A session-level advisory lock serialises runners,
so instances starting together apply each file once. A recorded file whose
content changed, or a recorded file that no longer exists, stops the run: the
database no longer matches the code and a person must look.

Small on purpose: yoyo and friends track files by name only, not by content.
"""

import argparse
import hashlib
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from shared.config import CommonSettings, load_settings

log = logging.getLogger(__name__)

MIGRATIONS_ROOT = Path(__file__).resolve().parent.parent / "migrations"
SERVICES = ("auth", "wallet")  # each owns the schema of the same name
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(service: str, root: Path = MIGRATIONS_ROOT) -> list[Migration]:
    migrations = []
    for path in sorted((root / service).glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: expected a name like 0001_create_users.sql")
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"migrations/{service}: two files share a version number")
    return migrations


def migrate(database_url: str, service: str, root: Path = MIGRATIONS_ROOT) -> list[str]:
    """Applies the pending migrations of `service`; returns the names applied."""
    migrations = load_migrations(service, root)
    schema = sql.Identifier(service)
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Session-level lock: held across the per-file transactions below.
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"migrations:{service}",))
        try:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                    " version integer PRIMARY KEY,"
                    " name text NOT NULL,"
                    " checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(schema)
            )
            applied = {
                version: (name, checksum)
                for version, name, checksum in conn.execute(
                    sql.SQL("SELECT version, name, checksum FROM {}.schema_migrations").format(
                        schema
                    )
                )
            }
            _check_applied(service, migrations, applied)
            done = []
            for migration in migrations:
                if migration.version in applied:
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {}.schema_migrations (version, name, checksum)"
                            " VALUES (%s, %s, %s)"
                        ).format(schema),
                        (migration.version, migration.name, migration.checksum),
                    )
                log.info("applied migration", extra={"service": service, "file": migration.name})
                done.append(migration.name)
            return done
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"migrations:{service}",))


def _check_applied(
    service: str, migrations: list[Migration], applied: dict[int, tuple[str, str]]
) -> None:
    on_disk = {migration.version: migration for migration in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = on_disk.get(version)
        if migration is None:
            raise MigrationError(f"{service}: applied migration {name} is missing from disk")
        if migration.checksum != checksum:
            raise MigrationError(
                f"{service}: applied migration {name} was edited after it ran"
                " (add a new migration instead)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply the services' SQL migrations.")
    # Checked here, not with `choices`: Python 3.11's argparse refuses an empty list then.
    parser.add_argument("services", nargs="*", help=f"any of {', '.join(SERVICES)} (default: all)")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.services) - set(SERVICES)):
        parser.error(f"unknown service {', '.join(unknown)}: choose from {', '.join(SERVICES)}")
    logging.basicConfig(level="INFO", format="%(message)s")
    database_url = load_settings(CommonSettings).database_url
    try:
        for service in args.services or SERVICES:
            applied = migrate(database_url, service)
            print(f"{service}: {len(applied)} migration(s) applied {applied or ''}".rstrip())
    except (MigrationError, psycopg.Error) as error:
        print(f"migration failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
