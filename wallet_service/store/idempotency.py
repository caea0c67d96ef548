"""Idempotency records: the first outcome of each (caller, key), claimed before anything
else in a movement's transaction and replayed on a retry. Refusals are kept at least 24
hours; a succeeded key is also remembered for good by what it made (a transaction or a hold)."""

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from wallet_service.store import Conn, one

# Claims the key, or locks and returns the record that holds it: a concurrent claim of the
# same key waits here until the first one commits (then it gets that outcome) or rolls back
# (then it claims the key itself). One statement, so a clean-up cannot slip in between. It
# also says what a key whose record was cleaned up made: the ledger and the holds remember.
CLAIM = """
WITH claim AS (
    INSERT INTO wallet.idempotency_keys AS k (principal, key, request_hash)
    VALUES (%(principal)s, %(key)s, %(request_hash)s)
    ON CONFLICT (principal, key) DO UPDATE SET key = EXCLUDED.key
    RETURNING (xmax = 0) AS claimed, request_hash, status, transaction_id, balances_after,
        response, error_reason, error_message, error_metadata
)
SELECT claim.*,
    claim.claimed AND (
        EXISTS (SELECT FROM wallet.transactions t
                WHERE t.requested_by = %(principal)s AND t.idempotency_key = %(key)s)
        OR EXISTS (SELECT FROM wallet.holds h
                   WHERE h.requested_by = %(principal)s AND h.idempotency_key = %(key)s)
        OR EXISTS (SELECT FROM wallet.holds h
                   WHERE h.finished_by = %(principal)s AND h.finished_by_key = %(key)s)
    ) AS used_before
FROM claim
"""


@dataclass(frozen=True)
class Record:
    claimed: bool  # this call holds the key now: nothing was recorded under it
    used_before: bool  # claimed, but the key made something before its record was cleaned up
    request_hash: str
    status: str  # 'pending' while claimed, then 'succeeded' or 'failed'
    response: bytes | None
    transaction_id: UUID | None
    balances_after: dict[str, Any] | None  # records from before responses were kept
    error_reason: str | None
    error_message: str | None
    error_metadata: dict[str, str]


async def claim(conn: Conn, principal: str, key: str, request_hash: str) -> Record:
    row = await one(conn, CLAIM, {"principal": principal, "key": key, "request_hash": request_hash})
    assert row is not None
    return Record(
        claimed=row["claimed"],
        used_before=row["used_before"],
        request_hash=row["request_hash"],
        status=row["status"],
        response=row["response"],
        transaction_id=row["transaction_id"],
        balances_after=row["balances_after"],
        error_reason=row["error_reason"],
        error_message=row["error_message"],
        error_metadata=row["error_metadata"],
    )


async def record_failure(
    conn: Conn, principal: str, key: str, reason: str, message: str, metadata: dict[str, str]
) -> None:
    await conn.execute(
        "UPDATE wallet.idempotency_keys SET status = 'failed', error_reason = %s,"
        " error_message = %s, error_metadata = %s WHERE principal = %s AND key = %s",
        (reason, message, Jsonb(metadata), principal, key),
    )


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
