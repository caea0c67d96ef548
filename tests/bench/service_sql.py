r"""The wallet service's own SQL for one credit, as a pgbench script (`service-credit-*`).

The statements and their parameters are recorded from the functions of wallet_service/store
that the engine (`Engine._transaction` in wallet_service/engine/runner.py) calls for a credit,
in its order, and sent in the round trips the service really makes (`credit_round_trips`).

What the engine works out in Python between round trips is stood in for: the wallet, the
transaction id and the key are drawn by pgbench; the wallet's next sequence number and
balance after, which the engine reads under the lock, are read again by subqueries on the
locked row in the write (pgbench cannot carry a result from one pipeline into the next:
\gset is not allowed in pipeline mode), a little more work for the server than the service's
write; the lock-time clock is clock_timestamp(); the request hash, the stored answer and the
event payload are constants of their real size.

When the engine's statements change, this follows; when the store's functions or the shapes
they take change, building the script fails, and so does the quick test (tests/test_bench.py).
When the engine's round trips change, change `credit_round_trips`.
"""

import json
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.types.json import Jsonb

from shared.gen.wallet.v1 import wallet_pb2
from wallet_service import store
from wallet_service.models import Transaction, TransactionType
from wallet_service.store import idempotency
from wallet_service.store import ledger as ledger_store
from wallet_service.store import wallets as wallets_store
from wallet_service.store.ledger import Event, Outcome, Posting, WalletChange, Writes

AMOUNT = 100
PRINCIPAL = "svc_bench_payments"
# The service's defaults when a call has no deadline (engine.runner.Limits).
LOCK_TIMEOUT_MS, STATEMENT_TIMEOUT_MS = 5000, 10000


@dataclass(frozen=True)
class Sql:
    """A value the script computes: pgbench variables (`:name`) or an SQL expression."""

    text: str


def wallet_id_sql(number: str) -> str:
    """The wallet of the reference schema numbered `number` (1 to BENCH_WALLETS)."""
    return f"lpad(to_hex({number}), 32, '0')::uuid"


WALLET = Sql(wallet_id_sql(":wallet::bigint"))
TRANSACTION = Sql(wallet_id_sql(":transaction::bigint"))
KEY = Sql(":key")
AT = Sql("clock_timestamp()")
_LOCKED = f"FROM wallet.wallets w WHERE w.id = {WALLET.text}"
LAST_SEQUENCE = Sql(f"(SELECT w.last_sequence {_LOCKED})")
SEQUENCE = Sql(f"(SELECT w.last_sequence + 1 {_LOCKED})")
BALANCE_AFTER = Sql(f"(SELECT w.balance + {AMOUNT} {_LOCKED})")


class _Recorder:
    """Stands in for a psycopg connection (and its cursors): keeps what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def execute(self, query: str, params: Any = None, **options: Any) -> "_Recorder":
        self.sent.append((query, params))
        return self

    def cursor(self, **options: Any) -> "_Recorder":
        return self


async def credit_round_trips() -> list[list[str]]:
    """The SQL of one credit, ready for pgbench, in the service's two round trips (as the
    engine sends them, engine/runner.py): BEGIN and everything up to the locks, then the
    write and COMMIT."""
    conn: Any = _Recorder()
    await store.send_begin(conn, serializable=False)
    await store.send_local_timeouts(conn, LOCK_TIMEOUT_MS, STATEMENT_TIMEOUT_MS)
    await idempotency.send_claims(conn, [(PRINCIPAL, KEY, "0" * 64)])
    await wallets_store.send_lock(conn, {WALLET: None})
    await wallets_store.send_clock(conn, [WALLET])
    locks = [render(query, params) for query, params in conn.sent]
    conn.sent.clear()
    await ledger_store.send_write(conn, _credit_writes())
    await store.send_commit(conn)
    write = [render(query, params) for query, params in conn.sent]
    return [locks, write]


def _credit_writes() -> Writes:
    """What the engine's book writes for one credit (Book.post, then the recorded answer)."""
    credit = TransactionType.CREDIT
    transaction: Any = Transaction(
        id=TRANSACTION,
        type=credit,
        amount=AMOUNT,
        currency="EUR",
        source_wallet_id=None,
        destination_wallet_id=WALLET,
        idempotency_key=KEY,
        reference="",
        requested_by=PRINCIPAL,
        created_at=AT,
    )
    answer, payload = _typical_answer_and_event()
    at: Any = AT
    return Writes(
        transactions=[(transaction, "0" * 64)],
        postings=[Posting(WALLET, TRANSACTION, credit, SEQUENCE, AMOUNT, BALANCE_AFTER, at)],
        wallets=[WalletChange(WALLET, AMOUNT, 0, 1, LAST_SEQUENCE, at, status_reason="")],
        events=[
            Event(WALLET, "bench-owner", PRINCIPAL, "EVENT_TYPE_TRANSACTION_POSTED", payload, at)
        ],
        outcomes=[Outcome(PRINCIPAL, KEY, TRANSACTION, answer)],
    )


def _typical_answer_and_event() -> tuple[bytes, bytes]:
    """A credit's answer and its event, as the service stores them, with real-sized fields."""
    at = Timestamp(seconds=1_800_000_000, nanos=123_456_000)
    transaction = wallet_pb2.Transaction(
        id=str(UUID(int=1)),
        type=wallet_pb2.TRANSACTION_TYPE_CREDIT,
        amount=AMOUNT,
        currency="EUR",
        destination_wallet_id=str(UUID(int=2)),
        idempotency_key="bench-0123456789-0-123456",
        create_time=at,
    )
    answer = wallet_pb2.CreditResponse(transaction=transaction)
    entry = wallet_pb2.LedgerEntry(
        wallet_id=str(UUID(int=2)),
        transaction=transaction,
        balance_change=AMOUNT,
        balance_after=10**12,
        sequence=12,
    )
    event = wallet_pb2.WalletEvent(
        type=wallet_pb2.EVENT_TYPE_TRANSACTION_POSTED,
        wallet_id=str(UUID(int=2)),
        create_time=at,
        entry=entry,
    )
    return answer.SerializeToString(), event.SerializeToString()


_PLACEHOLDER = re.compile(r"%\((\w+)\)[sbt]|%[sbt]|%%")


def render(query: str, params: Any) -> str:
    """The statement with psycopg's placeholders replaced by SQL literals and expressions."""
    positional = iter(params) if isinstance(params, list | tuple) else None

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        if match.group(1) is not None:
            return literal(params[match.group(1)])
        assert positional is not None, f"positional parameter without a sequence in {query}"
        return literal(next(positional))

    return _PLACEHOLDER.sub(replace, query).strip()


def literal(value: Any) -> str:
    if isinstance(value, Sql):
        return value.text
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bytes):
        return f"'\\x{value.hex()}'::bytea"
    if isinstance(value, Jsonb):
        return literal(json.dumps(value.obj))
    if isinstance(value, list):
        return f"ARRAY[{', '.join(literal(item) for item in value)}]" if value else "'{}'"
    raise TypeError(
        f"the bench's copy of the service's credit SQL cannot render {value!r}: the store's"
        " functions changed (update tests/bench/service_sql.py)"
    )


async def credit_script(wallet: str) -> str:
    """The pgbench script: `wallet` is a pgbench expression (`random(1, 10000)`, or `1`).
    Each round trip is a pipeline of its own: pgbench sends it, then waits for every answer."""
    lines = [
        f"\\set wallet {wallet}",
        "\\set transaction random(1, 9223372036854775807)",
        "\\set key random(1, 9223372036854775807)",
    ]
    for statements in await credit_round_trips():
        lines += [
            "\\startpipeline",
            *(f"{statement};" for statement in statements),
            "\\endpipeline",
        ]
    return "\n".join(lines) + "\n"
