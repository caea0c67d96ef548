"""Events: written with the change they describe (the book's write, or here for a new
wallet), read in stream order by watchers, and deleted after their retention."""

from dataclasses import dataclass
from uuid import UUID

from wallet_service.store import Conn, all_rows, one
from wallet_service.store.ledger import Event


async def insert(conn: Conn, event: Event) -> None:
    await conn.execute(
        "INSERT INTO wallet.events (wallet_id, owner_id, requested_by, type, payload, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (
            event.wallet_id,
            event.owner_id,
            event.requested_by,
            event.type,
            event.payload,
            event.created_at,
        ),
    )


@dataclass(frozen=True)
class Position:
    """Where an event is in the stream: ordered by the writing transaction's id, then the
    event's own id."""

    xid: int
    id: int


@dataclass(frozen=True)
class StoredEvent:
    position: Position
    owner_id: str
    requested_by: str
    payload: bytes


@dataclass(frozen=True)
class Page:
    events: list[StoredEvent]
    held_back: bool  # committed events wait for older transactions to finish
    horizon: Position  # every event before it that will ever exist is visible now


# Events after `after`, in stream order, that are safe to hand out: only those of
# transactions older than every transaction still running (`pg_snapshot_xmin`), so that a
# transaction that took its id earlier but commits later can never be skipped.
READ_PAGE = """
WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
SELECT e.id, e.xid::text AS xid, e.owner_id, e.requested_by, e.payload,
       (SELECT xmin::text FROM horizon) AS horizon
FROM wallet.events e, horizon
WHERE (e.xid, e.id) > (%(xid)s::xid8, %(id)s) AND e.xid < horizon.xmin
  AND (%(owner)s::text IS NULL OR e.owner_id = %(owner)s)
  AND (%(wallet)s::uuid IS NULL OR e.wallet_id = %(wallet)s)
ORDER BY e.xid, e.id
LIMIT %(limit)s
"""

HELD_BACK = """
SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS horizon, EXISTS (
    SELECT FROM wallet.events e
    WHERE (e.xid, e.id) > (%(xid)s::xid8, %(id)s)
      AND e.xid >= pg_snapshot_xmin(pg_current_snapshot())
      AND (%(owner)s::text IS NULL OR e.owner_id = %(owner)s)
      AND (%(wallet)s::uuid IS NULL OR e.wallet_id = %(wallet)s)
) AS held_back
"""


async def read_page(
    conn: Conn, after: Position, owner: str | None, wallet: UUID | None, limit: int
) -> Page:
    params = {
        "xid": str(after.xid),
        "id": after.id,
        "owner": owner,
        "wallet": wallet,
        "limit": limit,
    }
    rows = await all_rows(conn, READ_PAGE, params)
    events = [
        StoredEvent(
            Position(int(row["xid"]), row["id"]),
            row["owner_id"],
            row["requested_by"],
            row["payload"],
        )
        for row in rows
    ]
    if len(events) == limit:
        return Page(events, held_back=False, horizon=events[-1].position)
    state = await one(conn, HELD_BACK, params)
    assert state is not None
    return Page(events, state["held_back"], Position(int(state["horizon"]), 0))


async def horizon(conn: Conn) -> Position:
    """The position of "now": every event from a transaction older than every running one
    is before it; every event still to come is after it."""
    row = await one(conn, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin")
    assert row is not None
    return Position(int(row["xmin"]), 0)


async def next_transaction_id(conn: Conn) -> int:
    """The id the next transaction of this cluster will get: every event ever written here
    has a smaller one (a larger one comes from another cluster, or a lost timeline)."""
    row = await one(conn, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS xmax")
    assert row is not None
    return int(row["xmax"])


async def delete_older_than(conn: Conn, days: float) -> int:
    cursor = await conn.execute(
        "DELETE FROM wallet.events WHERE created_at < now() - make_interval(secs => %s)",
        (days * 86400,),
    )
    return cursor.rowcount
