"""The engine: runs each money operation as one PostgreSQL transaction, and is the one place
that takes locks.

In that transaction: claim the caller's idempotency key (or replay its first outcome), lock
the wallet rows with SELECT ... FOR UPDATE in ascending id order (so no two operations can
deadlock), then the hold or refunded-total rows the operation needs, let the operation check
and change the book in memory, write everything in one statement, record the outcome (the
serialised answer) under the key, commit.

A final business refusal (FAILED_PRECONDITION: insufficient funds, a hold already captured,
...) is recorded under the key too, and replayed: the first outcome of a key is final. A
succeeded key stays unique forever: the ledger and the holds table refuse a second use, and
a retry long after the idempotency record was cleaned up replays from them.

Whatever goes wrong after the transaction started is resolved here where it can be, always by
trying again with the same key on a fresh connection, whose claim finds what the first attempt
committed, if anything: a lost connection (perhaps around COMMIT), a serialization failure or a
deadlock. What cannot be resolved is answered UNAVAILABLE or ABORTED, which tell the client
that the outcome is unknown and to retry with the same key.
"""

import asyncio
import contextlib
import math
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import grpc
import psycopg
import psycopg_pool
from google.protobuf.message import Message
from psycopg import errors as pg_errors

from shared.deadlines import answer_margin
from shared.errors import (
    ServiceError,
    aborted,
    already_exists,
    deadline_exceeded,
    failed_precondition,
    unavailable,
)
from wallet_service import store
from wallet_service.engine.book import Book, LockedWallet
from wallet_service.engine.operations.base import Operation, Refusal
from wallet_service.store import holds as holds_store
from wallet_service.store import idempotency
from wallet_service.store import ledger as ledger_store
from wallet_service.store import wallets as wallets_store
from wallet_service.store.ledger import Outcome

# Lost races are retried this many times at most (always within the client's deadline): a
# hot wallet in SERIALIZABLE mode makes every waiting transaction lose to the one before it.
MAX_ATTEMPTS = 20
# Below this there is no point starting: not even an uncontended movement fits.
MIN_USABLE_SECONDS = 0.002
# The longest an operation waits for the earlier ones of this process on the same wallet
# when the client sets no deadline: they are making progress, unlike a row lock someone holds.
TURN_TIMEOUT_SECONDS = 10.0
# The unique indexes that make a succeeded key unique forever.
ONE_USE_PER_KEY = {
    "transactions_one_per_caller_key",
    "holds_one_per_caller_key",
    "holds_finished_by_key",
}


@dataclass(frozen=True)
class Limits:
    """Bounds on how long an operation may wait for locks when the client sets no deadline."""

    lock_timeout_seconds: float = 5.0
    statement_timeout_seconds: float = 10.0
    # Every money transaction SERIALIZABLE, as on a distributed PostgreSQL-compatible engine;
    # the retries below handle the serialization failures this brings. Reads stay as they are.
    serializable: bool = False


class Call(Protocol):
    """What the engine needs of the RPC it serves (grpc's ServicerContext has both)."""

    def time_remaining(self) -> float | None: ...

    def cancelled(self) -> bool: ...


@dataclass(frozen=True)
class Timeouts:
    """How long one operation may wait: for its turn on a wallet in this process, for a
    row lock, for a statement. A bound set by the client's deadline ends as
    DEADLINE_EXCEEDED; one set by the server's own limits as ABORTED LOCK_TIMEOUT."""

    turn_seconds: float
    lock_ms: int
    statement_ms: int
    turn_set_by_deadline: bool
    lock_set_by_deadline: bool


def timeouts_for(call: Call, limits: Limits) -> Timeouts:
    """How long the operation may wait; refuses to start for a call that is cancelled or
    whose deadline leaves no time to work."""
    if call.cancelled():
        raise ServiceError(grpc.StatusCode.CANCELLED, "CANCELLED", "the call was cancelled")
    remaining = call.time_remaining()
    usable = math.inf
    if remaining is not None:
        usable = remaining - answer_margin(remaining)
        if usable < MIN_USABLE_SECONDS:
            raise deadline_exceeded("DEADLINE_EXCEEDED", "the deadline is too close to start")
    lock_timeout = min(limits.lock_timeout_seconds, usable)
    return Timeouts(
        turn_seconds=min(TURN_TIMEOUT_SECONDS, usable),
        lock_ms=max(1, round(lock_timeout * 1000)),
        statement_ms=max(1, round(min(limits.statement_timeout_seconds, usable) * 1000)),
        turn_set_by_deadline=usable < TURN_TIMEOUT_SECONDS,
        lock_set_by_deadline=usable < limits.lock_timeout_seconds,
    )


class WalletTurns:
    """Operations of this process that touch the same wallet take turns here, in arrival
    order, before they go to the database. The database's row locks still decide between
    processes; this keeps a hot wallet from holding a pool connection per waiting call, and
    keeps the transactions queued behind one another from all losing to it in SERIALIZABLE
    mode. Turns are taken in ascending wallet id order, like the row locks."""

    def __init__(self) -> None:
        self._locks: dict[UUID, asyncio.Lock] = {}
        self._users: dict[UUID, int] = {}

    @contextlib.asynccontextmanager
    async def take(self, wallet_ids: list[UUID], timeouts: Timeouts) -> AsyncIterator[None]:
        held: list[asyncio.Lock] = []
        ids = sorted(set(wallet_ids))
        for wallet_id in ids:
            self._users[wallet_id] = self._users.get(wallet_id, 0) + 1
        try:
            async with asyncio.timeout(timeouts.turn_seconds):
                for wallet_id in ids:
                    lock = self._locks.setdefault(wallet_id, asyncio.Lock())
                    await lock.acquire()
                    held.append(lock)
            yield
        except TimeoutError:
            raise _wait_over(timeouts.turn_set_by_deadline) from None
        finally:
            for lock in reversed(held):
                lock.release()
            for wallet_id in ids:
                self._users[wallet_id] -= 1
                if not self._users[wallet_id]:
                    # No lock yet if every taker gave up before reaching this wallet.
                    del self._users[wallet_id]
                    self._locks.pop(wallet_id, None)


def _wait_over(set_by_deadline: bool) -> ServiceError:
    if set_by_deadline:
        return deadline_exceeded(
            "DEADLINE_EXCEEDED", "the deadline passed while waiting for the wallet"
        )
    return aborted("LOCK_TIMEOUT", "the wallet is busy; retry with the same key")


class Engine:
    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        limits: Limits,
        events_committed: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self._limits = limits
        self._turns = WalletTurns()
        self._events_committed = events_committed  # wakes the event watchers

    async def execute(self, operation: Operation, call: Call) -> Message:
        """Runs `operation` once, whatever the retries; returns its answer or raises its
        refusal (the first outcome of its key, either way)."""
        timeouts = timeouts_for(call, self._limits)
        if operation.needs_preparing:
            async with self._pool.connection() as conn:
                await operation.prepare(conn)
        async with self._turns.take(list(operation.wallets()), timeouts):
            outcome = await self._run(operation, call)
        if isinstance(outcome, ServiceError):
            raise outcome
        return outcome

    async def sweep_expired_holds(self, limit: int = 500) -> int:
        """Marks holds past their expiry as EXPIRED, with their events; returns how many.
        They stopped counting the instant they expired; this tidies their status. Safe with
        several instances: each hold is marked once, and a wallet a movement holds right now
        is skipped until the next round."""
        async with (
            self._pool.connection() as conn,
            isolation(conn, self._limits.serializable),
            conn.transaction(),
        ):
            rows, at, holds = await holds_store.lock_expired(conn, limit)
            if not holds:
                return 0
            assert at is not None
            book = Book(at=at, wallets={id_: _locked(row) for id_, row in rows.items()})
            for hold in holds:
                book.expire_hold(hold)
            await ledger_store.write(conn, book.final_writes())
        self._events_committed()
        return len(holds)

    async def _run(self, operation: Operation, call: Call) -> Message | ServiceError:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._pool.connection() as conn:
                    timeouts = timeouts_for(call, self._limits)  # again, after any pool wait
                    async with isolation(conn, self._limits.serializable), conn.transaction():
                        await store.set_local_timeouts(
                            conn, timeouts.lock_ms, timeouts.statement_ms
                        )
                        outcome, wrote_events = await _run_once(conn, operation)
                if wrote_events:
                    self._events_committed()
                return outcome
            except (pg_errors.LockNotAvailable, pg_errors.QueryCanceled):
                raise _wait_over(timeouts.lock_set_by_deadline) from None
            except (
                pg_errors.SerializationFailure,
                pg_errors.DeadlockDetected,
                StartAgain,
            ) as error:
                await _before_retry(attempt, call, error)
            except pg_errors.UniqueViolation as error:
                if error.diag.constraint_name not in ONE_USE_PER_KEY:
                    raise
                # Another request with this key committed first: the next claim replays it.
                await _before_retry(attempt, call, error)
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                if not connection_lost(error):
                    raise
                # Perhaps committed, perhaps not: the next attempt's claim finds out.
                await _before_retry(attempt, call, error)
        raise AssertionError("every attempt either returns or raises")


class StartAgain(Exception):
    """A wallet this transaction just locked was written by a transaction with a larger id
    (this one took its id before it waited for the lock). Writing now would put the wallet's
    events out of transaction id order, which readers of the event stream rely on; a new
    transaction gets a larger id."""


@contextlib.asynccontextmanager
async def isolation(conn: store.Conn, serializable: bool) -> AsyncIterator[None]:
    """The transaction begun inside runs SERIALIZABLE when asked (set when BEGIN is sent: no
    round trip); the connection goes back to the pool with its default."""
    if not serializable:
        yield
        return
    await conn.set_isolation_level(psycopg.IsolationLevel.SERIALIZABLE)
    try:
        yield
    finally:
        if not conn.closed:
            await conn.set_isolation_level(None)


def connection_lost(error: psycopg.Error) -> bool:
    """The connection failed (no SQLSTATE, class 08) or the server ended it (class 57)."""
    return error.sqlstate is None or error.sqlstate[:2] in ("08", "57")


async def _before_retry(attempt: int, call: Call, error: Exception) -> None:
    """Waits a little before the next attempt, or gives up with a status that tells the
    client the outcome is unknown (retry with the same key)."""
    remaining = call.time_remaining()
    if attempt < MAX_ATTEMPTS and (remaining is None or remaining > MIN_USABLE_SECONDS * 10):
        await asyncio.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))
        return
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError) and connection_lost(
        error
    ):
        raise unavailable(
            "DATABASE_UNAVAILABLE", "database unavailable; retry with the same key"
        ) from None
    raise aborted(
        "CONCURRENT_UPDATE", "lost a race with concurrent updates; retry with the same key"
    ) from None


async def _run_once(conn: store.Conn, operation: Operation) -> tuple[Message | ServiceError, bool]:
    """The operation's outcome, and whether it wrote events."""
    principal, key = operation.principal.subject, operation.key
    request_hash = operation.fingerprint()
    if key is not None:
        record = await idempotency.claim(conn, principal, key, request_hash)
        if not record.claimed:
            return await _replay(conn, operation, record), False
        if record.used_before:
            answer = await operation.replay_stored(conn)
            await idempotency.record_success(conn, principal, key, None, answer.SerializeToString())
            return answer, False
    book = await _lock(conn, operation)
    try:
        answer, transaction_id = operation.apply(book, request_hash)
    except Refusal as refusal:
        if key is None:
            raise
        await idempotency.record_failure(
            conn, principal, key, refusal.reason, refusal.message, refusal.metadata
        )
        return refusal, False
    if key is not None:
        book.record(Outcome(principal, key, transaction_id, answer.SerializeToString()))
    writes = book.final_writes()
    await ledger_store.write(conn, writes)
    return answer, bool(writes.events)


async def _replay(
    conn: store.Conn, operation: Operation, record: idempotency.Record
) -> Message | ServiceError:
    if record.request_hash != operation.fingerprint():
        raise already_exists(
            "IDEMPOTENCY_KEY_REUSED",
            "this idempotency key was used for a different request; use a new key",
        )
    if record.status == "failed":
        assert record.error_reason is not None and record.error_message is not None
        return failed_precondition(
            record.error_reason, record.error_message, **record.error_metadata
        )
    if record.response is not None:
        return operation.response_type.FromString(record.response)
    # Recorded before answers were kept: rebuilt from the ledger, as after a clean-up.
    return await operation.replay_stored(conn)


async def _lock(conn: store.Conn, operation: Operation) -> Book:
    """Takes the operation's locks in the global order: wallets by ascending id, then holds,
    then refunded totals. A wallet it may not use is not even locked: it looks absent."""
    wanted = operation.wallets()
    rows, at = await wallets_store.lock_wallets(conn, wanted)
    for wallet_id in wanted:
        if wallet_id not in rows:
            raise operation.wallet_not_found(wallet_id)
    if any(row.newer_change for row in rows.values()):
        raise StartAgain
    assert at is not None
    book = Book(at=at, wallets={id_: _locked(row) for id_, row in rows.items()})
    if operation.hold_ids:
        book.holds = await holds_store.lock_holds(conn, operation.hold_ids)
    if operation.refunded_ids:
        book.refunded = await ledger_store.lock_refunded_amounts(conn, operation.refunded_ids)
    return book


def _locked(row: wallets_store.LockedRow) -> LockedWallet:
    wallet = row.wallet
    return LockedWallet(
        id=wallet.id,
        user_id=wallet.user_id,
        currency=wallet.currency,
        balance=wallet.balance,
        held=wallet.held,
        last_sequence=row.last_sequence,
        status=wallet.status,
        status_reason=wallet.status_reason,
        status_changed_at=wallet.status_changed_at,
        created_at=wallet.created_at,
        metadata=wallet.metadata,
    )
