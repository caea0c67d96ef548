"""The ledger: transactions and ledger entries, read; and everything one database transaction
of the engine changes, written in a single statement (row locks are held until commit, so
fewer round trips mean a hot wallet serves more calls)."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from wallet_service.models import Hold, LedgerEntry, Transaction, TransactionType, WalletStatus
from wallet_service.store import Conn, Pending, all_rows, one, send

TRANSACTION_COLUMNS = (
    "t.id, t.type, t.amount, t.currency, t.source_wallet_id, t.destination_wallet_id,"
    " t.idempotency_key, t.reference, t.requested_by, t.created_at, t.hold_id, t.refund_of,"
    " t.metadata, t.batch_index,"
    " coalesce((SELECT r.amount FROM wallet.refunded_amounts r WHERE r.transaction_id = t.id),"
    " 0) AS refunded_amount"
)


def transaction_from_row(row: dict[str, Any]) -> Transaction:
    fields = {key: row[key] for key in Transaction.__dataclass_fields__}
    fields["type"] = TransactionType(fields["type"])
    return Transaction(**fields)


async def get_transaction(conn: Conn, transaction_id: UUID) -> Transaction | None:
    row = await one(
        conn,
        f"SELECT {TRANSACTION_COLUMNS} FROM wallet.transactions t WHERE t.id = %s",
        (transaction_id,),
    )
    return transaction_from_row(row) if row else None


@dataclass(frozen=True)
class MadeWithKey:
    """What a caller's key made: its transactions (several for a batch, in order), the
    request hash they were made with (None if older than the hashes), and each touched
    wallet's balance right after the last of them."""

    transactions: list[Transaction]
    request_hash: str | None
    balances_after: dict[UUID, int]


async def made_with_key(conn: Conn, requested_by: str, key: str) -> MadeWithKey | None:
    rows = await all_rows(
        conn,
        f"SELECT {TRANSACTION_COLUMNS}, t.request_hash FROM wallet.transactions t"
        " WHERE t.requested_by = %s AND t.idempotency_key = %s"
        " AND t.key_occurrence = 1 ORDER BY t.batch_index",
        (requested_by, key),
    )
    if not rows:
        return None
    transactions = [transaction_from_row(row) for row in rows]
    balances = await all_rows(
        conn,
        "SELECT DISTINCT ON (e.wallet_id) e.wallet_id, e.balance_after"
        " FROM wallet.ledger_entries e WHERE e.transaction_id = ANY(%s)"
        " ORDER BY e.wallet_id, e.sequence DESC",
        ([t.id for t in transactions],),
    )
    return MadeWithKey(
        transactions,
        rows[0]["request_hash"],
        {row["wallet_id"]: row["balance_after"] for row in balances},
    )


async def balance_at(conn: Conn, wallet_id: UUID, at: datetime) -> tuple[int, int]:
    """(balance, sequence) after the wallet's newest entry at or before `at`; (0, 0) if none.
    One index probe (wallet, time), however long the wallet's history."""
    row = await one(
        conn,
        "SELECT balance_after, sequence FROM wallet.ledger_entries"
        " WHERE wallet_id = %s AND created_at <= %s"
        " ORDER BY created_at DESC, sequence DESC LIMIT 1",
        (wallet_id, at),
    )
    return (row["balance_after"], row["sequence"]) if row else (0, 0)


async def list_ledger_entries(
    conn: Conn,
    wallet_id: UUID,
    *,
    before_sequence: int | None,
    type_: TransactionType | None,
    start_time: datetime | None,
    end_time: datetime | None,
    metadata: tuple[str, str, str | None] | None,
    limit: int,
) -> list[LedgerEntry]:
    """A wallet's entries, newest first, strictly older than the `before_sequence` cursor.
    `metadata` is (key, value, requested_by): transactions with that pair in their metadata,
    requested by that caller (None: by anyone)."""
    rows = await all_rows(
        conn,
        "SELECT e.sequence, e.wallet_id, e.amount AS entry_amount, e.balance_after,"
        f" {TRANSACTION_COLUMNS}"
        " FROM wallet.ledger_entries e JOIN wallet.transactions t ON t.id = e.transaction_id"
        " WHERE e.wallet_id = %(wallet_id)s"
        " AND (%(before_sequence)s::bigint IS NULL OR e.sequence < %(before_sequence)s)"
        " AND (%(type)s::text IS NULL OR e.type = %(type)s)"
        " AND (%(start_time)s::timestamptz IS NULL OR e.created_at >= %(start_time)s)"
        " AND (%(end_time)s::timestamptz IS NULL OR e.created_at < %(end_time)s)"
        " AND (%(metadata)s::jsonb IS NULL OR (t.metadata @> %(metadata)s"
        "      AND (%(requested_by)s::text IS NULL OR t.requested_by = %(requested_by)s)))"
        " ORDER BY e.sequence DESC LIMIT %(limit)s",
        {
            "wallet_id": wallet_id,
            "before_sequence": before_sequence,
            "type": type_.value if type_ else None,
            "start_time": start_time,
            "end_time": end_time,
            "metadata": Jsonb({metadata[0]: metadata[1]}) if metadata else None,
            "requested_by": metadata[2] if metadata else None,
            "limit": limit,
        },
    )
    return [
        LedgerEntry(
            sequence=row["sequence"],
            wallet_id=row["wallet_id"],
            transaction=transaction_from_row(row),
            amount=row["entry_amount"],
            balance_after=row["balance_after"],
        )
        for row in rows
    ]


async def send_lock_refunded(conn: Conn, transaction_ids: list[UUID]) -> Pending[dict[UUID, int]]:
    """Locks (creating it at 0 if need be) each transaction's refunded total, in ascending id
    order; sent after the wallets' locks. Concurrent refunds of one transaction wait here."""
    return await send(
        conn,
        "INSERT INTO wallet.refunded_amounts AS r (transaction_id, amount)"
        " SELECT id, 0 FROM unnest(%s::uuid[]) AS ids (id) ORDER BY id"
        " ON CONFLICT (transaction_id) DO UPDATE SET amount = r.amount"
        " RETURNING r.transaction_id, r.amount",
        (transaction_ids,),
        lambda rows: {row["transaction_id"]: row["amount"] for row in rows},
    )


# --- writing what a database transaction of the engine did ----------------------------------


@dataclass(frozen=True)
class Posting:
    """One ledger entry: a signed change of one wallet's balance by one transaction."""

    wallet_id: UUID
    transaction_id: UUID
    type: TransactionType
    sequence: int
    amount: int
    balance_after: int
    created_at: datetime


@dataclass(frozen=True)
class WalletChange:
    """The sum of what a database transaction changed on one wallet it locked."""

    wallet_id: UUID
    balance: int
    held: int
    entries: int
    last_sequence_before: int
    at: datetime
    status: WalletStatus | None = None  # a new status, with its reason
    status_reason: str | None = None


@dataclass(frozen=True)
class StatusChange:
    wallet_id: UUID
    old_status: WalletStatus
    new_status: WalletStatus
    reason: str
    changed_by: str
    changed_at: datetime


@dataclass(frozen=True)
class Event:
    """A committed change of one wallet, as an event row (payload: a WalletEvent)."""

    wallet_id: UUID
    owner_id: str
    requested_by: str
    type: str
    payload: bytes
    created_at: datetime


@dataclass(frozen=True)
class Outcome:
    """A key's first outcome, as recorded under it: the answer, or a refusal."""

    principal: str
    key: str
    transaction_id: UUID | None
    response: bytes | None  # None for a refusal
    refusal: tuple[str, str, dict[str, str]] | None = None  # reason, message, metadata


@dataclass
class Writes:
    transactions: list[tuple[Transaction, str]] = field(default_factory=list)  # with its hash
    postings: list[Posting] = field(default_factory=list)
    wallets: list[WalletChange] = field(default_factory=list)
    new_holds: list[tuple[Hold, str]] = field(default_factory=list)  # with its request hash
    finished_holds: list[tuple[Hold, str | None, str | None]] = field(default_factory=list)
    refunded_amounts: dict[UUID, int] = field(default_factory=dict)
    status_changes: list[StatusChange] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    released_keys: list[tuple[str, str]] = field(default_factory=list)  # claimed, then unused


# One statement for everything: each part is a no-op when its arrays are empty. A wallet
# update only applies if the wallet's last sequence is what the engine read under its lock,
# so the statement reports how many wallets it changed and the caller checks the count.
WRITE = """
WITH new_transactions AS (
    INSERT INTO wallet.transactions (id, type, amount, currency, source_wallet_id,
        destination_wallet_id, idempotency_key, request_hash, reference, requested_by,
        created_at, hold_id, refund_of, metadata, batch_index)
    SELECT * FROM unnest(%(t_id)s::uuid[], %(t_type)s::text[], %(t_amount)s::bigint[],
        %(t_currency)s::text[], %(t_source)s::uuid[], %(t_destination)s::uuid[],
        %(t_key)s::text[], %(t_hash)s::text[], %(t_reference)s::text[],
        %(t_requested_by)s::text[], %(t_created_at)s::timestamptz[], %(t_hold)s::uuid[],
        %(t_refund_of)s::uuid[], %(t_metadata)s::jsonb[], %(t_batch_index)s::smallint[])
), new_holds AS (
    INSERT INTO wallet.holds (id, wallet_id, destination_wallet_id, amount, currency,
        expires_at, requested_by, idempotency_key, request_hash, reference, created_at,
        metadata)
    SELECT * FROM unnest(%(h_id)s::uuid[], %(h_wallet)s::uuid[], %(h_destination)s::uuid[],
        %(h_amount)s::bigint[], %(h_currency)s::text[], %(h_expires_at)s::timestamptz[],
        %(h_requested_by)s::text[], %(h_key)s::text[], %(h_hash)s::text[],
        %(h_reference)s::text[], %(h_created_at)s::timestamptz[], %(h_metadata)s::jsonb[])
), entries AS (
    INSERT INTO wallet.ledger_entries (wallet_id, sequence, transaction_id, type, amount,
        balance_after, created_at)
    SELECT * FROM unnest(%(e_wallet)s::uuid[], %(e_sequence)s::bigint[],
        %(e_transaction)s::uuid[], %(e_type)s::text[], %(e_amount)s::bigint[],
        %(e_balance_after)s::bigint[], %(e_created_at)s::timestamptz[])
), finished_holds AS (
    UPDATE wallet.holds h SET status = f.status, captured_amount = f.captured_amount,
        capture_transaction_id = f.capture_transaction_id, finished_by = f.finished_by,
        finished_by_key = f.finished_by_key, finished_at = f.finished_at
    FROM unnest(%(f_id)s::uuid[], %(f_status)s::text[], %(f_captured)s::bigint[],
        %(f_capture)s::uuid[], %(f_by)s::text[], %(f_key)s::text[],
        %(f_at)s::timestamptz[])
        AS f (id, status, captured_amount, capture_transaction_id, finished_by,
              finished_by_key, finished_at)
    WHERE h.id = f.id
), refunded AS (
    UPDATE wallet.refunded_amounts r SET amount = f.amount
    FROM unnest(%(r_id)s::uuid[], %(r_amount)s::bigint[]) AS f (id, amount)
    WHERE r.transaction_id = f.id
), outcomes AS (
    UPDATE wallet.idempotency_keys k
    SET status = CASE WHEN o.response IS NULL THEN 'failed' ELSE 'succeeded' END,
        transaction_id = o.transaction_id, response = o.response,
        error_reason = o.reason, error_message = o.message,
        error_metadata = coalesce(o.metadata, '{}')
    FROM unnest(%(o_principal)s::text[], %(o_key)s::text[], %(o_transaction)s::uuid[],
        %(o_response)s::bytea[], %(o_reason)s::text[], %(o_message)s::text[],
        %(o_metadata)s::jsonb[])
        AS o (principal, key, transaction_id, response, reason, message, metadata)
    WHERE k.principal = o.principal AND k.key = o.key
), released AS (
    DELETE FROM wallet.idempotency_keys k
    USING unnest(%(r_principal)s::text[], %(r_key)s::text[]) AS r (principal, key)
    WHERE k.principal = r.principal AND k.key = r.key AND k.status = 'pending'
), status_changes AS (
    INSERT INTO wallet.wallet_status_changes (wallet_id, old_status, new_status, reason,
        changed_by, changed_at)
    SELECT * FROM unnest(%(s_wallet)s::uuid[], %(s_old)s::text[], %(s_new)s::text[],
        %(s_reason)s::text[], %(s_by)s::text[], %(s_at)s::timestamptz[])
), events AS (
    INSERT INTO wallet.events (wallet_id, owner_id, requested_by, type, payload, created_at)
    SELECT * FROM unnest(%(v_wallet)s::uuid[], %(v_owner)s::text[], %(v_by)s::text[],
        %(v_type)s::text[], %(v_payload)s::bytea[], %(v_at)s::timestamptz[])
), changed_wallets AS (
    UPDATE wallet.wallets w SET balance = w.balance + c.balance, held = w.held + c.held,
        last_sequence = w.last_sequence + c.entries, updated_at = c.at,
        status = coalesce(c.status, w.status),
        status_reason = coalesce(c.status_reason, w.status_reason),
        status_changed_at = CASE WHEN c.status IS NULL THEN w.status_changed_at ELSE c.at END,
        last_xid = pg_current_xact_id()
    FROM unnest(%(w_id)s::uuid[], %(w_balance)s::bigint[], %(w_held)s::bigint[],
        %(w_entries)s::bigint[], %(w_sequence)s::bigint[], %(w_status)s::text[],
        %(w_reason)s::text[], %(w_at)s::timestamptz[])
        AS c (id, balance, held, entries, last_sequence_before, status, status_reason, at)
    WHERE w.id = c.id AND w.last_sequence = c.last_sequence_before
    RETURNING w.id
)
SELECT wallet.check(count(*) = %(wallets)s,
    'a locked wallet changed under the engine; nothing was written') FROM changed_wallets
"""


async def send_write(conn: Conn, writes: Writes) -> Pending[None]:
    """Writes everything at once; fails if a wallet changed behind the engine's back (it
    cannot while its row lock is held: this is the last line of defence)."""
    transactions = [transaction for transaction, _ in writes.transactions]
    return await send(
        conn,
        WRITE,
        {
            "t_id": [t.id for t in transactions],
            "t_type": [t.type.value for t in transactions],
            "t_amount": [t.amount for t in transactions],
            "t_currency": [t.currency for t in transactions],
            "t_source": [t.source_wallet_id for t in transactions],
            "t_destination": [t.destination_wallet_id for t in transactions],
            "t_key": [t.idempotency_key for t in transactions],
            "t_hash": [request_hash for _, request_hash in writes.transactions],
            "t_reference": [t.reference for t in transactions],
            "t_requested_by": [t.requested_by for t in transactions],
            "t_created_at": [t.created_at for t in transactions],
            "t_hold": [t.hold_id for t in transactions],
            "t_refund_of": [t.refund_of for t in transactions],
            "t_metadata": [Jsonb(t.metadata) for t in transactions],
            "t_batch_index": [t.batch_index for t in transactions],
            "h_id": [h.id for h, _ in writes.new_holds],
            "h_wallet": [h.wallet_id for h, _ in writes.new_holds],
            "h_destination": [h.destination_wallet_id for h, _ in writes.new_holds],
            "h_amount": [h.amount for h, _ in writes.new_holds],
            "h_currency": [h.currency for h, _ in writes.new_holds],
            "h_expires_at": [h.expires_at for h, _ in writes.new_holds],
            "h_requested_by": [h.requested_by for h, _ in writes.new_holds],
            "h_key": [h.idempotency_key for h, _ in writes.new_holds],
            "h_hash": [request_hash for _, request_hash in writes.new_holds],
            "h_reference": [h.reference for h, _ in writes.new_holds],
            "h_created_at": [h.created_at for h, _ in writes.new_holds],
            "h_metadata": [Jsonb(h.metadata) for h, _ in writes.new_holds],
            "e_wallet": [p.wallet_id for p in writes.postings],
            "e_sequence": [p.sequence for p in writes.postings],
            "e_transaction": [p.transaction_id for p in writes.postings],
            "e_type": [p.type.value for p in writes.postings],
            "e_amount": [p.amount for p in writes.postings],
            "e_balance_after": [p.balance_after for p in writes.postings],
            "e_created_at": [p.created_at for p in writes.postings],
            "f_id": [h.id for h, _, _ in writes.finished_holds],
            "f_status": [h.status.value for h, _, _ in writes.finished_holds],
            "f_captured": [h.captured_amount for h, _, _ in writes.finished_holds],
            "f_capture": [h.capture_transaction_id for h, _, _ in writes.finished_holds],
            "f_by": [by for _, by, _ in writes.finished_holds],
            "f_key": [key for _, _, key in writes.finished_holds],
            "f_at": [h.finished_at for h, _, _ in writes.finished_holds],
            "r_id": list(writes.refunded_amounts),
            "r_amount": list(writes.refunded_amounts.values()),
            "o_principal": [o.principal for o in writes.outcomes],
            "o_key": [o.key for o in writes.outcomes],
            "o_transaction": [o.transaction_id for o in writes.outcomes],
            "o_response": [o.response for o in writes.outcomes],
            "o_reason": [o.refusal[0] if o.refusal else None for o in writes.outcomes],
            "o_message": [o.refusal[1] if o.refusal else None for o in writes.outcomes],
            "o_metadata": [Jsonb(o.refusal[2]) if o.refusal else None for o in writes.outcomes],
            "w_id": [c.wallet_id for c in writes.wallets],
            "w_balance": [c.balance for c in writes.wallets],
            "w_held": [c.held for c in writes.wallets],
            "w_entries": [c.entries for c in writes.wallets],
            "w_sequence": [c.last_sequence_before for c in writes.wallets],
            "w_status": [c.status.value if c.status else None for c in writes.wallets],
            "w_reason": [c.status_reason for c in writes.wallets],
            "w_at": [c.at for c in writes.wallets],
            "s_wallet": [c.wallet_id for c in writes.status_changes],
            "s_old": [c.old_status.value for c in writes.status_changes],
            "s_new": [c.new_status.value for c in writes.status_changes],
            "s_reason": [c.reason for c in writes.status_changes],
            "s_by": [c.changed_by for c in writes.status_changes],
            "s_at": [c.changed_at for c in writes.status_changes],
            "v_wallet": [e.wallet_id for e in writes.events],
            "v_owner": [e.owner_id for e in writes.events],
            "v_by": [e.requested_by for e in writes.events],
            "v_type": [e.type for e in writes.events],
            "v_payload": [e.payload for e in writes.events],
            "v_at": [e.created_at for e in writes.events],
            "wallets": len(writes.wallets),
            "r_principal": [principal for principal, _ in writes.released_keys],
            "r_key": [key for _, key in writes.released_keys],
        },
        lambda rows: None,
    )
