"""Operator commands of the auth service.

    python -m auth_service.admin create-service-account --name payments --scopes wallet:credit [--json]
    python -m auth_service.admin disable-service-account --client-id svc_...
    python -m auth_service.admin rotate-keys
    python -m auth_service.admin revoke-key --key-id=KID  (with "=": a key id may start with "-")

They use DATABASE_URL like the service. The functions behind them take a database URL
or an open pool, so tests and other tools can call them directly.
"""

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import psycopg_pool

from auth_service import keys
from auth_service import repository as repo
from auth_service.config import AuthSettings
from auth_service.repository import Conn
from auth_service.tokens import new_secret, secret_hash
from shared.config import load_settings

Database = str | psycopg_pool.AsyncConnectionPool[Any]
# RFC 6749 scope-token: printable ASCII but space, `"` and `\`.
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,100}$")
MAX_NAME_LENGTH = 100


@contextlib.asynccontextmanager
async def _transaction(database: Database) -> AsyncIterator[Conn]:
    """A connection whose work commits when the block ends without an error."""
    if isinstance(database, str):
        async with await psycopg.AsyncConnection.connect(database) as conn:
            yield conn
    else:
        async with database.connection() as conn:
            yield conn


def _valid_scopes(scopes: Sequence[str]) -> list[str]:
    # Accept "a b", "a,b" and separate arguments alike.
    parsed = [scope for item in scopes for scope in re.split(r"[\s,]+", item) if scope]
    if not parsed:
        raise ValueError("a service account needs at least one scope")
    for scope in parsed:
        if not _SCOPE.match(scope):
            raise ValueError(f"not a valid scope: {scope!r}")
    return sorted(set(parsed))


async def create_service_account(
    database: Database, name: str, scopes: Sequence[str]
) -> tuple[str, str]:
    """Creates a service account; returns its client id and its secret (stored hashed)."""
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH or not name.isprintable():
        raise ValueError(f"the name must have 1 to {MAX_NAME_LENGTH} printable characters")
    valid_scopes = _valid_scopes(scopes)
    client_id, secret = f"svc_{secrets.token_hex(12)}", new_secret()
    async with _transaction(database) as conn:
        await repo.insert_service_account(conn, client_id, name, secret_hash(secret), valid_scopes)
    return client_id, secret


async def disable_service_account(database: Database, client_id: str) -> bool:
    """Stops the account from getting new tokens, and lists it as revoked so that its
    current tokens are refused too; False if no enabled account has this id."""
    async with _transaction(database) as conn:
        return await repo.disable_service_account(conn, client_id)


async def rotate_keys(database: Database) -> str:
    """Makes a new signing key active; returns its key id."""
    async with _transaction(database) as conn:
        return await keys.rotate(conn)


async def revoke_key(database: Database, key_id: str) -> bool:
    """Unpublishes a (leaked) key at once and lists it as revoked, so every token it signed
    is refused; the active key is replaced first. False if no unrevoked key has this id."""
    async with _transaction(database) as conn:
        return await keys.revoke(conn, key_id)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m auth_service.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-service-account", help="print a new client id and secret")
    create.add_argument("--name", required=True, help="who will use it, e.g. payments")
    create.add_argument("--scopes", required=True, nargs="+", help="e.g. wallet:credit")
    create.add_argument(
        "--json", action="store_true", help="print the body IssueServiceToken takes, as JSON"
    )
    disable = commands.add_parser("disable-service-account", help="refuse its new tokens")
    disable.add_argument("--client-id", required=True)
    commands.add_parser("rotate-keys", help="sign new tokens with a new key")
    revoke = commands.add_parser("revoke-key", help="unpublish a key now; refuse its tokens")
    revoke.add_argument("--key-id", required=True, help="the key's kid, from GetPublicKeys")
    return parser


async def _run(args: argparse.Namespace, database_url: str) -> int:
    if args.command == "create-service-account":
        client_id, secret = await create_service_account(database_url, args.name, args.scopes)
        if args.json:  # for scripts: `grpcurl -d "$(...)" ... IssueServiceToken`
            print(json.dumps({"client_id": client_id, "client_secret": secret}))
            return 0
        print(f"client_id:     {client_id}")
        print(f"client_secret: {secret}")
        print("The secret is shown only this once; store it in the service's secret store.")
    elif args.command == "disable-service-account":
        if not await disable_service_account(database_url, args.client_id):
            print(f"no enabled service account {args.client_id}", file=sys.stderr)
            return 1
        print(f"disabled {args.client_id}; verifiers refuse its tokens within seconds")
    elif args.command == "revoke-key":
        if not await revoke_key(database_url, args.key_id):
            print(f"no unrevoked key {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}; verifiers refuse its tokens within seconds")
    else:
        key_id = await rotate_keys(database_url)
        print(f"new signing key {key_id}; the previous one stays published until its tokens expire")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings(AuthSettings)
    try:
        return asyncio.run(_run(args, settings.database_url))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except psycopg.Error as error:
        print(f"database error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
