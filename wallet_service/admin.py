"""Operator commands for the wallet service.

python -m wallet_service.admin check-invariants
    Each wallet's balance equals the sum of its ledger entries and its last entry's
    balance_after; its entries are numbered 1..n with no gap; its held amount is the sum of
    its held holds and its available balance is never negative; no hold is captured beyond
    its amount, no transaction refunded beyond its amount; per currency, money in minus money
    out equals the sum of balances.
    Prints what it found; exits 1 when an invariant fails.

python -m wallet_service.admin clean-idempotency-keys
    Deletes idempotency outcomes older than IDEMPOTENCY_RETENTION_HOURS (at least 24).
"""

import argparse
import asyncio
import json
import sys
from typing import Any

import psycopg

from shared.config import load_settings
from wallet_service.config import WalletSettings
from wallet_service.store import idempotency, invariants


async def check_invariants(database_url: str) -> tuple[bool, dict[str, Any]]:
    """(all invariants hold, the report). Reads one consistent snapshot."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        async with conn.transaction():
            report = await invariants.report(conn)
    report["unbalanced_currencies"] = [
        total
        for total in report["totals"]
        if total["money_in"] - total["money_out"] != total["balances"]
    ]
    ok = not any(problems for name, problems in report.items() if name != "totals")
    return ok, report


async def clean_idempotency_keys(database_url: str, retention_hours: float) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        return await idempotency.delete_older_than(conn, retention_hours)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wallet_service.admin")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check-invariants", help="verify balances against the ledger")
    commands.add_parser("clean-idempotency-keys", help="delete expired idempotency outcomes")
    args = parser.parse_args(argv)
    settings = load_settings(WalletSettings)

    if args.command == "check-invariants":
        ok, report = asyncio.run(check_invariants(settings.database_url))
        print(json.dumps(report, default=str, indent=2))
        print("invariants hold" if ok else "INVARIANT VIOLATED", file=sys.stderr)
        return 0 if ok else 1
    removed = asyncio.run(
        clean_idempotency_keys(settings.database_url, settings.idempotency_retention_hours)
    )
    print(
        f"removed {removed} idempotency key(s) older than {settings.idempotency_retention_hours} h"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
