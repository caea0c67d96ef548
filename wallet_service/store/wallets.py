"""Wallets: created, read with their available balance, and locked for a money movement."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from wallet_service.models import Metadata, Wallet, WalletStatus
from wallet_service.store import Conn, all_rows, one

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
    wallet: Wallet  # `held` as stored: live holds, and any past expiry not yet swept
    last_sequence: int
    newer_change: bool  # a transaction with a larger id wrote to it before this one


# Locks the wanted wallets in ascending id order (the sort runs before the row locks are
# taken), each only if its owner matches when one is given: another user's wallet is
# neither returned nor locked nor waited for. Also reads the clock the movement runs at, and
# whether a transaction with a larger id than this one's already wrote to the wallet.
LOCK_WALLETS = f"""
SELECT {OWN_COLUMNS}, w.held, w.last_sequence, clock_timestamp() AS at,
    coalesce(w.last_xid > pg_current_xact_id(), false) AS newer_change
FROM wallet.wallets w
JOIN unnest(%(ids)s::uuid[], %(owners)s::text[]) AS wanted (id, owner)
    ON w.id = wanted.id AND (wanted.owner IS NULL OR w.user_id = wanted.owner)
ORDER BY w.id
FOR UPDATE OF w
"""

# Holds past their expiry that the sweep has not marked yet: they no longer count. Read
# after the wallets are locked, so it sees every hold their earlier holders made.
EXPIRED_UNSWEPT = """
SELECT wallet_id, sum(amount) AS amount FROM wallet.holds
WHERE wallet_id = ANY(%(ids)s) AND status = 'held' AND expires_at <= %(at)s
GROUP BY wallet_id
"""


async def lock_wallets(
    conn: Conn, wanted: dict[UUID, str | None]
) -> tuple[dict[UUID, LockedRow], datetime | None]:
    """Locks the wallets of `wanted` (id -> required owner or None); returns those found and
    the instant the locks were taken (None if none was found). Holds past their expiry by
    then are left out of each wallet's `held`."""
    rows = await all_rows(
        conn, LOCK_WALLETS, {"ids": list(wanted), "owners": list(wanted.values())}
    )
    if not rows:
        return {}, None
    at = rows[0]["at"]
    expired = {}
    with_holds = [row["id"] for row in rows if row["held"]]
    if with_holds:
        for row in await all_rows(conn, EXPIRED_UNSWEPT, {"ids": with_holds, "at": at}):
            expired[row["wallet_id"]] = int(row["amount"])
    locked = {
        row["id"]: LockedRow(
            wallet=wallet_from_row({**row, "held": row["held"] - expired.get(row["id"], 0)}),
            last_sequence=row["last_sequence"],
            newer_change=row["newer_change"],
        )
        for row in rows
    }
    return locked, at
