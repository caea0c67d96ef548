"""All of the wallet service's SQL. Functions take an open connection; the caller owns the
transaction. Tables live in the `wallet` schema (migrations/wallet/)."""

from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from wallet_service.models import LedgerEntry, Movement, Transaction, TransactionType, Wallet

Conn = AsyncConnection[Any]

WALLET_COLUMNS = "id, user_id, currency, balance, created_at, updated_at"
TRANSACTION_COLUMNS = (
    "t.id, t.type, t.amount, t.currency, t.source_wallet_id, t.destination_wallet_id,"
    " t.idempotency_key, t.reference, t.requested_by, t.created_at"
)


def _wallet(row: dict[str, Any]) -> Wallet:
    return Wallet(**{key: row[key] for key in Wallet.__dataclass_fields__})


def _transaction(row: dict[str, Any]) -> Transaction:
    fields = {key: row[key] for key in Transaction.__dataclass_fields__}
    fields["type"] = TransactionType(fields["type"])
    return Transaction(**fields)


async def _one(conn: Conn, query: str, params: Any) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchone()


async def _all(conn: Conn, query: str, params: Any) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchall()


# --- wallets -------------------------------------------------------------------------------


async def insert_wallet(conn: Conn, user_id: str, currency: str) -> Wallet | None:
    """The new wallet, or None when the user already has one in this currency."""
    row = await _one(
        conn,
        f"INSERT INTO wallet.wallets (user_id, currency) VALUES (%s, %s)"
        f" ON CONFLICT (user_id, currency) DO NOTHING RETURNING {WALLET_COLUMNS}",
        (user_id, currency),
    )
    return _wallet(row) if row else None


async def get_wallet(conn: Conn, wallet_id: UUID) -> Wallet | None:
    row = await _one(
        conn, f"SELECT {WALLET_COLUMNS} FROM wallet.wallets WHERE id = %s", (wallet_id,)
    )
    return _wallet(row) if row else None


async def lock_wallet(conn: Conn, wallet_id: UUID, owner: str | None = None) -> Wallet | None:
    """Reads the wallet and holds its row lock until the transaction ends. With `owner`, only
    that user's wallet: another user's row is neither returned nor locked (nor waited for)."""
    row = await _one(
        conn,
        f"SELECT {WALLET_COLUMNS} FROM wallet.wallets"
        " WHERE id = %s AND (%s::text IS NULL OR user_id = %s) FOR UPDATE",
        (wallet_id, owner, owner),
    )
    return _wallet(row) if row else None


async def wallet_owners(conn: Conn, wallet_ids: list[UUID]) -> dict[UUID, str]:
    """The user id of each wallet (a wallet never changes owner)."""
    rows = await _all(
        conn, "SELECT id, user_id FROM wallet.wallets WHERE id = ANY(%s)", (wallet_ids,)
    )
    return {row["id"]: row["user_id"] for row in rows}


async def list_wallets(
    conn: Conn, user_id: str, after: tuple[datetime, UUID] | None, limit: int
) -> list[Wallet]:
    """The user's wallets, oldest first, after the (created_at, id) cursor."""
    after_time, after_id = after or (None, None)
    rows = await _all(
        conn,
        f"SELECT {WALLET_COLUMNS} FROM wallet.wallets WHERE user_id = %(user_id)s"
        " AND (%(after_time)s::timestamptz IS NULL"
        "      OR (created_at, id) > (%(after_time)s, %(after_id)s::uuid))"
        " ORDER BY created_at, id LIMIT %(limit)s",
        {"user_id": user_id, "after_time": after_time, "after_id": after_id, "limit": limit},
    )
    return [_wallet(row) for row in rows]


# --- the ledger ----------------------------------------------------------------------------


# Applies a checked movement to wallets this transaction has locked, in one round trip (the
# row locks are held until commit, so fewer round trips mean a hot wallet serves more calls):
# append the transaction, apply each signed change, append one ledger entry per wallet with
# its balance after and the wallet's next sequence number, and record the outcome under the
# caller's idempotency key.
APPLY_MOVEMENT = f"""
WITH changes AS (
    SELECT * FROM unnest(%(wallet_ids)s::uuid[], %(changes)s::bigint[]) AS c (wallet_id, change)
), transaction AS (
    INSERT INTO wallet.transactions AS t (id, type, amount, currency, source_wallet_id,
        destination_wallet_id, idempotency_key, request_hash, reference, requested_by)
    VALUES (%(id)s, %(type)s, %(amount)s, %(currency)s, %(source)s, %(destination)s,
        %(key)s, %(request_hash)s, %(reference)s, %(principal)s)
    RETURNING {TRANSACTION_COLUMNS}
), updated AS (
    UPDATE wallet.wallets w
    SET balance = w.balance + c.change, last_sequence = w.last_sequence + 1, updated_at = now()
    FROM changes c WHERE w.id = c.wallet_id
    RETURNING w.id, w.balance, w.last_sequence, c.change
), entries AS (
    INSERT INTO wallet.ledger_entries
        (wallet_id, sequence, transaction_id, type, amount, balance_after)
    SELECT u.id, u.last_sequence, %(id)s, %(type)s, u.change, u.balance FROM updated u
    ORDER BY u.id
), balances AS (
    SELECT jsonb_object_agg(u.id, u.balance) AS balances_after FROM updated u
), outcome AS (
    UPDATE wallet.idempotency_keys k
    SET status = 'succeeded', transaction_id = %(id)s, balances_after = b.balances_after
    FROM balances b WHERE k.principal = %(principal)s AND k.key = %(key)s
)
SELECT t.*, b.balances_after FROM transaction t, balances b
"""


async def apply_movement(
    conn: Conn,
    transaction_id: UUID,
    movement: Movement,
    changes: list[tuple[UUID, int]],
    currency: str,
    idempotency_key: str,
    request_hash: str,
    principal: str,
) -> tuple[Transaction, dict[UUID, int]]:
    """Writes a movement whose wallets are locked and checked; returns the transaction and
    each wallet's balance after it."""
    row = await _one(
        conn,
        APPLY_MOVEMENT,
        {
            "wallet_ids": [wallet_id for wallet_id, _ in changes],
            "changes": [change for _, change in changes],
            "id": transaction_id,
            "type": movement.type.value,
            "amount": movement.amount,
            "currency": currency,
            "source": movement.source_wallet_id,
            "destination": movement.destination_wallet_id,
            "key": idempotency_key,
            "request_hash": request_hash,
            "reference": movement.reference,
            "principal": principal,
        },
    )
    assert row is not None
    return _transaction(row), stored_balances(row)


def stored_balances(row: dict[str, Any]) -> dict[UUID, int]:
    """The `balances_after` JSON of a movement or idempotency row, keyed by wallet id."""
    return {UUID(wallet_id): int(balance) for wallet_id, balance in row["balances_after"].items()}


async def get_transaction(conn: Conn, transaction_id: UUID) -> Transaction | None:
    row = await _one(
        conn,
        f"SELECT {TRANSACTION_COLUMNS} FROM wallet.transactions t WHERE t.id = %s",
        (transaction_id,),
    )
    return _transaction(row) if row else None


async def list_ledger_entries(
    conn: Conn,
    wallet_id: UUID,
    *,
    before_sequence: int | None,
    type_: TransactionType | None,
    start_time: datetime | None,
    end_time: datetime | None,
    limit: int,
) -> list[LedgerEntry]:
    """A wallet's entries, newest first, strictly older than the `before_sequence` cursor."""
    rows = await _all(
        conn,
        "SELECT e.sequence, e.wallet_id, e.amount AS entry_amount, e.balance_after,"
        f" {TRANSACTION_COLUMNS}"
        " FROM wallet.ledger_entries e JOIN wallet.transactions t ON t.id = e.transaction_id"
        " WHERE e.wallet_id = %(wallet_id)s"
        " AND (%(before_sequence)s::bigint IS NULL OR e.sequence < %(before_sequence)s)"
        " AND (%(type)s::text IS NULL OR e.type = %(type)s)"
        " AND (%(start_time)s::timestamptz IS NULL OR e.created_at >= %(start_time)s)"
        " AND (%(end_time)s::timestamptz IS NULL OR e.created_at < %(end_time)s)"
        " ORDER BY e.sequence DESC LIMIT %(limit)s",
        {
            "wallet_id": wallet_id,
            "before_sequence": before_sequence,
            "type": type_.value if type_ else None,
            "start_time": start_time,
            "end_time": end_time,
            "limit": limit,
        },
    )
    return [
        LedgerEntry(
            sequence=row["sequence"],
            wallet_id=row["wallet_id"],
            transaction=_transaction(row),
            amount=row["entry_amount"],
            balance_after=row["balance_after"],
        )
        for row in rows
    ]


# --- idempotency ---------------------------------------------------------------------------


async def claim_idempotency_key(
    conn: Conn, principal: str, key: str, request_hash: str
) -> dict[str, Any]:
    """Claims the caller's key, or locks and returns the record that already holds it.

    The returned row has `claimed` true when this call inserted it. A concurrent claim of the
    same key waits here until the first one commits (then it gets that outcome) or rolls back
    (then it claims the key itself). One statement, so a clean-up cannot slip in between.
    `ledger_transaction_id` names the transaction this key already made, if any: a record
    cleaned up after its retention leaves the key claimable, but the ledger remembers it.
    """
    row = await _one(
        conn,
        CLAIM_IDEMPOTENCY_KEY,
        {"principal": principal, "key": key, "request_hash": request_hash},
    )
    assert row is not None
    return row


CLAIM_IDEMPOTENCY_KEY = """
WITH claim AS (
    INSERT INTO wallet.idempotency_keys AS k (principal, key, request_hash)
    VALUES (%(principal)s, %(key)s, %(request_hash)s)
    ON CONFLICT (principal, key) DO UPDATE SET key = EXCLUDED.key
    RETURNING (xmax = 0) AS claimed, request_hash, status, transaction_id, balances_after,
        error_reason, error_message, error_metadata
)
SELECT claim.*, (
    SELECT t.id FROM wallet.transactions t
    WHERE t.requested_by = %(principal)s AND t.idempotency_key = %(key)s
    ORDER BY t.key_occurrence LIMIT 1
) AS ledger_transaction_id
FROM claim
"""


async def ledger_outcome(
    conn: Conn, transaction_id: UUID
) -> tuple[Transaction, str | None, dict[UUID, int]]:
    """A transaction as its key's first outcome: the transaction, the request hash it was made
    with (None for one older than the hashes) and each touched wallet's balance after it."""
    row = await _one(
        conn,
        f"SELECT {TRANSACTION_COLUMNS}, t.request_hash,"
        " (SELECT jsonb_object_agg(e.wallet_id, e.balance_after) FROM wallet.ledger_entries e"
        "  WHERE e.transaction_id = t.id) AS balances_after"
        " FROM wallet.transactions t WHERE t.id = %s",
        (transaction_id,),
    )
    assert row is not None, "the ledger keeps every transaction"
    return _transaction(row), row["request_hash"], stored_balances(row)


async def record_success(
    conn: Conn, principal: str, key: str, transaction_id: UUID, balances: dict[UUID, int]
) -> None:
    await conn.execute(
        "UPDATE wallet.idempotency_keys SET status = 'succeeded', transaction_id = %s,"
        " balances_after = %s WHERE principal = %s AND key = %s",
        (
            transaction_id,
            Jsonb({str(wallet_id): balance for wallet_id, balance in balances.items()}),
            principal,
            key,
        ),
    )


async def record_failure(
    conn: Conn, principal: str, key: str, reason: str, message: str, metadata: dict[str, str]
) -> None:
    await conn.execute(
        "UPDATE wallet.idempotency_keys SET status = 'failed', error_reason = %s,"
        " error_message = %s, error_metadata = %s WHERE principal = %s AND key = %s",
        (reason, message, Jsonb(metadata), principal, key),
    )


async def delete_idempotency_keys_older_than(conn: Conn, hours: float) -> int:
    cursor = await conn.execute(
        "DELETE FROM wallet.idempotency_keys WHERE created_at < now() - make_interval(secs => %s)",
        (hours * 3600,),
    )
    return cursor.rowcount


async def set_local_timeouts(conn: Conn, lock_timeout_ms: int, statement_timeout_ms: int) -> None:
    """Bounds lock waits and statements for the rest of this transaction."""
    await conn.execute(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
        (f"{lock_timeout_ms}ms", f"{statement_timeout_ms}ms"),
    )


# --- invariants ----------------------------------------------------------------------------

WALLETS_THAT_DRIFTED = """
SELECT w.id, w.balance, coalesce(sum(e.amount), 0) AS ledger_sum
FROM wallet.wallets w LEFT JOIN wallet.ledger_entries e ON e.wallet_id = w.id
GROUP BY w.id, w.balance
HAVING w.balance <> coalesce(sum(e.amount), 0)
"""

TOTALS_BY_CURRENCY = """
SELECT c.currency,
       coalesce((SELECT sum(balance) FROM wallet.wallets w WHERE w.currency = c.currency), 0)
           AS balances,
       coalesce((SELECT sum(amount) FROM wallet.transactions t
                 WHERE t.currency = c.currency AND t.type = 'credit'), 0) AS credits,
       coalesce((SELECT sum(amount) FROM wallet.transactions t
                 WHERE t.currency = c.currency AND t.type = 'debit'), 0) AS debits
FROM (SELECT DISTINCT currency FROM wallet.wallets) c
ORDER BY c.currency
"""

LAST_ENTRY_MISMATCHES = """
SELECT w.id, w.balance, last.balance_after
FROM wallet.wallets w
JOIN LATERAL (SELECT balance_after FROM wallet.ledger_entries e
              WHERE e.wallet_id = w.id ORDER BY e.sequence DESC LIMIT 1) last ON true
WHERE last.balance_after <> w.balance
"""

# Sequences run 1..n with no gap (they are unique per wallet, so n entries must end at n),
# and the wallet's last_sequence is the newest.
SEQUENCE_GAPS = """
SELECT w.id, w.last_sequence, count(e.sequence) AS entries,
       coalesce(max(e.sequence), 0) AS max_sequence
FROM wallet.wallets w LEFT JOIN wallet.ledger_entries e ON e.wallet_id = w.id
GROUP BY w.id, w.last_sequence
HAVING coalesce(max(e.sequence), 0) <> count(e.sequence)
    OR w.last_sequence <> count(e.sequence)
"""


async def invariant_report(conn: Conn) -> dict[str, list[dict[str, Any]]]:
    return {
        "drifted_wallets": await _all(conn, WALLETS_THAT_DRIFTED, ()),
        "stale_balance_after": await _all(conn, LAST_ENTRY_MISMATCHES, ()),
        "sequence_gaps": await _all(conn, SEQUENCE_GAPS, ()),
        "totals": await _all(conn, TOTALS_BY_CURRENCY, ()),
    }
