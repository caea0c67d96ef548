"""Idempotency records: the first outcome of each (caller, key), claimed before anything
else in a movement's transaction and replayed on a retry. Refusals are kept at least 24
hours; a succeeded key is also remembered for good by what it made (a transaction or a hold)."""

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from wallet_service.store import Conn, Pending, send

# Claims each key, or locks and returns the record that holds it: a concurrent claim of the
# same key waits here until the first one commits (then it gets that outcome) or rolls back
# (then it claims the key itself). Keys are claimed in one order, so two transactions claiming
# the same keys cannot deadlock. It also says what a key whose record was cleaned up made:
# the ledger and the holds remember.
CLAIM = """
WITH claim AS (
    INSERT INTO wallet.idempotency_keys AS k (principal, key, request_hash)
    SELECT * FROM unnest(%(principals)s::text[], %(keys)s::text[], %(hashes)s::text[])
        AS wanted (principal, key, request_hash)
    ORDER BY principal, key
    ON CONFLICT (principal, key) DO UPDATE SET key = EXCLUDED.key
    RETURNING k.principal, k.key, (xmax = 0) AS claimed, k.request_hash, k.status,
        k.transaction_id, k.response, k.error_reason, k.error_message, k.error_metadata
)
SELECT claim.*,
    claim.claimed AND (
        EXISTS (SELECT FROM wallet.transactions t
                WHERE t.requested_by = claim.principal AND t.idempotency_key = claim.key)
        OR EXISTS (SELECT FROM wallet.holds h
                   WHERE h.requested_by = claim.principal AND h.idempotency_key = claim.key)
        OR EXISTS (SELECT FROM wallet.holds h
                   WHERE h.finished_by = claim.principal AND h.finished_by_key = claim.key)
    ) AS used_before
FROM claim
"""

Claim = tuple[str, str, str]  # (principal, key, request hash)


@dataclass(frozen=True)
class Record:
    claimed: bool  # this call holds the key now: nothing was recorded under it
    used_before: bool  # claimed, but the key made something before its record was cleaned up
    request_hash: str
    status: str  # 'pending' while claimed, then 'succeeded' or 'failed'
    response: bytes | None
    transaction_id: UUID | None  # records from before answers were kept have only this
    error_reason: str | None
    error_message: str | None
    error_metadata: dict[str, str]


async def send_claims(conn: Conn, claims: list[Claim]) -> Pending[dict[tuple[str, str], Record]]:
    """Claims every (principal, key); the records by (principal, key)."""
    return await send(
        conn,
        CLAIM,
        {
            "principals": [principal for principal, _, _ in claims],
            "keys": [key for _, key, _ in claims],
            "hashes": [request_hash for _, _, request_hash in claims],
        },
        _records,
    )


def _records(rows: list[dict[str, Any]]) -> dict[tuple[str, str], Record]:
    return {
        (row["principal"], row["key"]): Record(
            claimed=row["claimed"],
            used_before=row["used_before"],
            request_hash=row["request_hash"],
            status=row["status"],
            response=row["response"],
            transaction_id=row["transaction_id"],
            error_reason=row["error_reason"],
            error_message=row["error_message"],
            error_metadata=row["error_metadata"],
        )
        for row in rows
    }


async def record_success(
    conn: Conn, principal: str, key: str, transaction_id: UUID | None, response: bytes
) -> None:
    await conn.execute(
        "UPDATE wallet.idempotency_keys SET status = 'succeeded', transaction_id = %s,"
        " response = %s WHERE principal = %s AND key = %s",
        (transaction_id, response, principal, key),
    )


async def delete_older_than(conn: Conn, hours: float) -> int:
    cursor = await conn.execute(
        "DELETE FROM wallet.idempotency_keys WHERE created_at < now() - make_interval(secs => %s)",
        (hours * 3600,),
    )
    return cursor.rowcount
