"""Holds: read, listed, locked for a capture or void, and swept when they expire. New holds
and status changes are written with the rest of a movement (store/ledger.py)."""

from datetime import datetime
from typing import Any
from uuid import UUID

from wallet_service.models import Hold, HoldStatus
from wallet_service.store import Conn, Pending, all_rows, one, send
from wallet_service.store import wallets as wallets_store

HOLD_COLUMNS = (
    "h.id, h.wallet_id, h.destination_wallet_id, h.amount, h.currency, h.status,"
    " h.captured_amount, h.expires_at, h.requested_by, h.idempotency_key, h.reference,"
    " h.capture_transaction_id, h.created_at, h.finished_at, h.metadata"
)


def hold_from_row(row: dict[str, Any]) -> Hold:
    fields = {key: row[key] for key in Hold.__dataclass_fields__}
    fields["status"] = HoldStatus(fields["status"])
    return Hold(**fields)


async def get_hold(conn: Conn, hold_id: UUID) -> Hold | None:
    row = await one(conn, f"SELECT {HOLD_COLUMNS} FROM wallet.holds h WHERE h.id = %s", (hold_id,))
    return hold_from_row(row) if row else None


async def send_lock(conn: Conn, hold_ids: list[UUID]) -> Pending[dict[UUID, Hold]]:
    """Locks holds in ascending id order; sent after their wallets' locks."""
    return await send(
        conn,
        f"SELECT {HOLD_COLUMNS} FROM wallet.holds h WHERE h.id = ANY(%s) ORDER BY h.id FOR UPDATE",
        (hold_ids,),
        lambda rows: {row["id"]: hold_from_row(row) for row in rows},
    )


async def hold_created_with(conn: Conn, requested_by: str, key: str) -> tuple[Hold, str] | None:
    """The hold a caller placed with `key`, and the request hash it was placed with."""
    row = await one(
        conn,
        f"SELECT {HOLD_COLUMNS}, h.request_hash FROM wallet.holds h"
        " WHERE h.requested_by = %s AND h.idempotency_key = %s",
        (requested_by, key),
    )
    return (hold_from_row(row), row["request_hash"]) if row else None


async def hold_finished_with(conn: Conn, finished_by: str, key: str) -> Hold | None:
    """The hold a caller captured or voided with `key`."""
    row = await one(
        conn,
        f"SELECT {HOLD_COLUMNS} FROM wallet.holds h"
        " WHERE h.finished_by = %s AND h.finished_by_key = %s",
        (finished_by, key),
    )
    return hold_from_row(row) if row else None


async def list_holds(
    conn: Conn,
    wallet_id: UUID,
    *,
    status: HoldStatus | None,
    before: tuple[datetime, UUID] | None,
    limit: int,
) -> list[Hold]:
    """A wallet's holds, newest first, after the (created_at, id) cursor. The status filter
    is the status as of now: a HELD hold past its expiry counts as EXPIRED."""
    before_time, before_id = before or (None, None)
    rows = await all_rows(
        conn,
        f"SELECT {HOLD_COLUMNS} FROM wallet.holds h WHERE h.wallet_id = %(wallet_id)s"
        " AND (%(status)s::text IS NULL OR %(status)s = CASE"
        "      WHEN h.status = 'held' AND h.expires_at <= clock_timestamp() THEN 'expired'"
        "      ELSE h.status END)"
        " AND (%(before_time)s::timestamptz IS NULL"
        "      OR (h.created_at, h.id) < (%(before_time)s, %(before_id)s::uuid))"
        " ORDER BY h.created_at DESC, h.id DESC LIMIT %(limit)s",
        {
            "wallet_id": wallet_id,
            "status": status.value if status else None,
            "before_time": before_time,
            "before_id": before_id,
            "limit": limit,
        },
    )
    return [hold_from_row(row) for row in rows]


# The wallets that have holds past their expiry still marked held, locked in ascending id
# order, skipping any a movement holds right now (the sweep gets it next time) and any a
# transaction with a larger id than this one's wrote to (see migration 0005: events).
LOCK_WALLETS_WITH_EXPIRED_HOLDS = f"""
SELECT {wallets_store.OWN_COLUMNS}, w.held, w.last_sequence, clock_timestamp() AS at
FROM wallet.wallets w
WHERE w.id IN (SELECT h.wallet_id FROM wallet.holds h
               WHERE h.status = 'held' AND h.expires_at <= clock_timestamp()
               ORDER BY h.expires_at LIMIT %(limit)s)
  AND (w.last_xid IS NULL OR w.last_xid < pg_current_xact_id())
ORDER BY w.id
FOR UPDATE OF w SKIP LOCKED
"""


async def lock_expired(
    conn: Conn, limit: int
) -> tuple[dict[UUID, wallets_store.LockedRow], datetime | None, list[Hold]]:
    """Locks wallets with holds past their expiry, then those holds (the global order);
    returns the wallets, the instant, and the holds."""
    rows = await all_rows(conn, LOCK_WALLETS_WITH_EXPIRED_HOLDS, {"limit": limit})
    if not rows:
        return {}, None, []
    at = rows[0]["at"]
    holds = [
        hold_from_row(row)
        for row in await all_rows(
            conn,
            f"SELECT {HOLD_COLUMNS} FROM wallet.holds h WHERE h.wallet_id = ANY(%s)"
            " AND h.status = 'held' AND h.expires_at <= %s ORDER BY h.id FOR UPDATE",
            ([row["id"] for row in rows], at),
        )
    ]
    expired: dict[UUID, int] = {}
    for hold in holds:
        expired[hold.wallet_id] = expired.get(hold.wallet_id, 0) + hold.amount
    return wallets_store.locked_rows(rows, expired), at, holds
