"""Wallets: created, read with their available balance, and locked for a money movement."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from wallet_service.models import Metadata, Wallet, WalletStatus
from wallet_service.store import Conn, Pending, all_rows, one, send

# `held` counts live holds only: those past their expiry (swept or not) no longer count.
LIVE_HELD = """(SELECT coalesce(sum(h.amount), 0)::bigint FROM wallet.holds h
    WHERE h.wallet_id = w.id AND h.status = 'held' AND h.expires_at > clock_timestamp())"""
OWN_COLUMNS = (
    "w.id, w.user_id, w.currency, w.balance, w.created_at, w.updated_at, w.status,"
    " w.status_reason, w.status_changed_at, w.metadata"
)
WALLET_COLUMNS = f"{OWN_COLUMNS}, {LIVE_HELD} AS held"


def wallet_from_row(row: dict[str, Any]) -> Wallet:
    fields = {key: row[key] for key in Wallet.__dataclass_fields__}
    fields["status"] = WalletStatus(fields["status"])
    return Wallet(**fields)


async def insert_wallet(
    conn: Conn, user_id: str, currency: str, metadata: Metadata
) -> Wallet | None:
    """The new wallet, or None when the user already has one in this currency."""
    row = await one(
        conn,
        "INSERT INTO wallet.wallets AS w (user_id, currency, metadata, last_xid)"
        " VALUES (%s, %s, %s, pg_current_xact_id())"
        f" ON CONFLICT (user_id, currency) DO NOTHING RETURNING {OWN_COLUMNS}, 0 AS held",
        (user_id, currency, Jsonb(metadata)),
    )
    return wallet_from_row(row) if row else None


async def get_wallet(conn: Conn, wallet_id: UUID) -> Wallet | None:
    row = await one(
        conn, f"SELECT {WALLET_COLUMNS} FROM wallet.wallets w WHERE w.id = %s", (wallet_id,)
    )
    return wallet_from_row(row) if row else None


async def wallet_owners(conn: Conn, wallet_ids: list[UUID]) -> dict[UUID, str]:
    """The user id of each wallet (a wallet never changes owner)."""
    rows = await all_rows(
        conn, "SELECT id, user_id FROM wallet.wallets WHERE id = ANY(%s)", (wallet_ids,)
    )
    return {row["id"]: row["user_id"] for row in rows}


async def list_wallets(
    conn: Conn, user_id: str, after: tuple[datetime, UUID] | None, limit: int
) -> list[Wallet]:
    """The user's wallets, oldest first, after the (created_at, id) cursor."""
    after_time, after_id = after or (None, None)
    rows = await all_rows(
        conn,
        f"SELECT {WALLET_COLUMNS} FROM wallet.wallets w WHERE w.user_id = %(user_id)s"
        " AND (%(after_time)s::timestamptz IS NULL"
        "      OR (w.created_at, w.id) > (%(after_time)s, %(after_id)s::uuid))"
        " ORDER BY w.created_at, w.id LIMIT %(limit)s",
        {"user_id": user_id, "after_time": after_time, "after_id": after_id, "limit": limit},
    )
    return [wallet_from_row(row) for row in rows]


# --- locking, for the engine ---------------------------------------------------------------


@dataclass(frozen=True)
class LockedRow:
    wallet: Wallet  # `held`: live holds only
    last_sequence: int
    newer_change: bool  # a transaction with a larger id wrote to it before this one


# Locks the wanted wallets in ascending id order (the sort runs before the row locks are
# taken), each only if its owner matches when one is given: another user's wallet is
# neither returned nor locked nor waited for. Also says whether a transaction with a larger
# id than this one's already wrote to the wallet.
LOCK_WALLETS = f"""
SELECT {OWN_COLUMNS}, w.held, w.last_sequence,
    coalesce(w.last_xid > pg_current_xact_id(), false) AS newer_change
FROM wallet.wallets w
JOIN unnest(%(ids)s::uuid[], %(owners)s::text[]) AS wanted (id, owner)
    ON w.id = wanted.id AND (wanted.owner IS NULL OR w.user_id = wanted.owner)
ORDER BY w.id
FOR UPDATE OF w
"""

# The instant the operations run at, read once their locks are held, and each wallet's holds
# past their expiry by then that the sweep has not marked yet: they no longer count.
CLOCK_AND_EXPIRED = """
WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS at)
SELECT clock.at, h.wallet_id, sum(h.amount) AS amount
FROM clock LEFT JOIN wallet.holds h
    ON h.wallet_id = ANY(%(ids)s) AND h.status = 'held' AND h.expires_at <= clock.at
GROUP BY clock.at, h.wallet_id
"""


async def send_lock(conn: Conn, wanted: dict[UUID, str | None]) -> Pending[list[dict[str, Any]]]:
    """Locks the wallets of `wanted` (id -> required owner, or None for any)."""
    return await send(
        conn, LOCK_WALLETS, {"ids": list(wanted), "owners": list(wanted.values())}, list
    )


async def send_clock(
    conn: Conn, wallet_ids: list[UUID]
) -> Pending[tuple[datetime, dict[UUID, int]]]:
    """Sent after the locks: (the instant, the expired unswept amount of each wallet)."""
    return await send(conn, CLOCK_AND_EXPIRED, {"ids": wallet_ids}, _clock)


def _clock(rows: list[dict[str, Any]]) -> tuple[datetime, dict[UUID, int]]:
    expired = {row["wallet_id"]: int(row["amount"]) for row in rows if row["wallet_id"]}
    return rows[0]["at"], expired


def locked_rows(rows: list[dict[str, Any]], expired: dict[UUID, int]) -> dict[UUID, LockedRow]:
    """The locked wallets, with holds past their expiry left out of `held`."""
    return {
        row["id"]: LockedRow(
            wallet=wallet_from_row({**row, "held": row["held"] - expired.get(row["id"], 0)}),
            last_sequence=row["last_sequence"],
            newer_change=row.get("newer_change", False),
        )
        for row in rows
    }
