"""The engine: runs money operations in PostgreSQL transactions, and is the one place that
takes locks.

Operations that wait for the same wallet in this process run together as one group
(combiner.py); a group is one transaction, sent in two round trips (pipeline mode):

1. BEGIN, the lock and statement timeouts, the claim of every operation's idempotency key,
   the wallet rows with SELECT ... FOR UPDATE in ascending id order (so no two transactions
   can deadlock), the instant and the expired holds, then any hold and refunded-total rows:
   one flush, one wait.
2. Each operation checks and changes the book of locked rows in memory, in arrival order, and
   gets its own outcome: a replay of its key's first outcome, a refusal (recorded under its
   key), another error (its key left unused) or its answer. Then everything is written in one
   statement, with each answer recorded under its key, and COMMIT: one flush, one wait.

A final business refusal (FAILED_PRECONDITION: insufficient funds, a hold already captured,
...) is recorded and replayed: the first outcome of a key is final. A succeeded key stays
unique forever: the ledger and the holds table refuse a second use, and a retry long after the
idempotency record was cleaned up replays from them.

Whatever goes wrong with the transaction is resolved here where it can be, always by trying
the group again on a fresh connection, whose claims find what the first attempt committed, if
anything: a lost connection (perhaps around COMMIT), a serialization failure, a deadlock. An
unexpected database error makes each operation of a group run alone, so that it is only that
operation's. What cannot be resolved is answered UNAVAILABLE or ABORTED, which tell the client
that the outcome is unknown and to retry with the same key.
"""

import asyncio
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import grpc
import psycopg
import psycopg_pool
from google.protobuf.message import Message
from psycopg import errors as pg_errors
from psycopg import pq

from shared import tracing
from shared.db import NoConnectionBeforeDeadline
from shared.deadlines import answer_margin, set_call_deadline
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
from wallet_service.engine.combiner import Combiner, Waiting
from wallet_service.engine.operations.base import Operation, Refusal
from wallet_service.metrics import record_committed
from wallet_service.models import Hold
from wallet_service.store import holds as holds_store
from wallet_service.store import idempotency
from wallet_service.store import ledger as ledger_store
from wallet_service.store import wallets as wallets_store
from wallet_service.store.ledger import Outcome, Writes

log = logging.getLogger(__name__)

# Lost races are retried this many times at most (always within the client's deadline): a
# hot wallet in SERIALIZABLE mode makes every waiting transaction lose to the one before it.
MAX_ATTEMPTS = 20
# An attempt that takes longer than its lock wait and statements allow, by this much, finds
# the database not answering: its connection is closed and the outcome found out by retrying.
ATTEMPT_MARGIN_SECONDS = 1.0
# A ROLLBACK after a failure that takes longer: the connection is closed instead.
ROLLBACK_SECONDS = 1.0
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


def _wait_over(set_by_deadline: bool) -> ServiceError:
    if set_by_deadline:
        return deadline_exceeded(
            "DEADLINE_EXCEEDED", "the deadline passed while waiting for the wallet"
        )
    return aborted("LOCK_TIMEOUT", "the wallet is busy; retry with the same key")


class StartAgain(Exception):
    """A wallet this transaction just locked was written by a transaction with a larger id
    (this one took its id before it waited for the lock). Writing now would put the wallet's
    events out of transaction id order, which readers of the event stream rely on; a new
    transaction gets a larger id."""


class Engine:
    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        limits: Limits,
        events_committed: Callable[[], None] = lambda: None,
        max_transactions: int = 3,
    ) -> None:
        self._pool = pool
        self._limits = limits
        self._events_committed = events_committed  # wakes the event watchers
        self._combiner = Combiner(self._run_group, max_transactions)

    async def execute(self, operation: Operation, call: Call) -> Message:
        """Runs `operation` once, whatever the retries; returns its answer or raises its
        refusal (the first outcome of its key, either way)."""
        timeouts = timeouts_for(call, self._limits)
        if operation.needs_preparing:
            async with self._pool.connection() as conn:
                await operation.prepare(conn)
        waiting = Waiting(operation, call, frozenset(operation.wallets()))
        return await self._combiner.submit(
            waiting, timeouts.turn_seconds, lambda: _wait_over(timeouts.turn_set_by_deadline)
        )

    async def stop(self) -> None:
        await self._combiner.stop()

    async def _run_group(self, members: list[Waiting]) -> None:
        """Runs a group's transaction, retried as a whole, and settles every member."""
        group = _Group(members, self._limits)
        if not group.members:
            return
        attributes = {"db.system": "postgresql", "wallet.operations": len(group.members)}
        with tracing.linked_span("money transaction", (m.span for m in members), attributes):
            await self._attempts(group)

    async def _attempts(self, group: "_Group") -> None:
        """Attempts the group's transaction until it commits or every member has an answer.
        A retry keeps only the members that still have time: one member's short deadline
        answers that member, not the others."""
        attempt = 0
        while group.members:
            attempt += 1
            set_call_deadline(group.seconds_left())  # the pool waits no longer than its members
            try:
                async with self._pool.connection() as conn:
                    try:
                        # Bounded here too: a database that stops answering (a partition, a
                        # host gone without a reset) must not hold the wallets forever.
                        async with asyncio.timeout(group.attempt_seconds()):
                            outcomes, writes = await self._transaction(conn, group)
                    except BaseException as error:
                        await _discard_if_unclean(conn, force=isinstance(error, TimeoutError))
                        raise
            except (pg_errors.LockNotAvailable, pg_errors.QueryCanceled):
                group = group.after_lock_wait()
                continue
            except (
                pg_errors.SerializationFailure,
                pg_errors.DeadlockDetected,
                StartAgain,
            ) as error:
                group = await _next_attempt(attempt, group, error)
                continue
            except pg_errors.UniqueViolation as error:
                if error.diag.constraint_name not in ONE_USE_PER_KEY:
                    return await self._one_by_one(group, error)
                # Another request with this key committed first: the next claim replays it.
                group = await _next_attempt(attempt, group, error)
                continue
            # Before OperationalError, their base class. No connection: this attempt sent nothing.
            except NoConnectionBeforeDeadline as error:  # the pool stayed busy
                group = await _next_attempt(attempt, group, error)  # for those with time left
                continue
            except psycopg_pool.PoolTimeout:  # the database is down
                group.settle_all(_database_unavailable())
                return
            except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as error:
                if not _outcome_unknown(error):
                    return await self._one_by_one(group, error)
                # Perhaps committed, perhaps not: the next attempt's claims find out.
                group = await _next_attempt(attempt, group, error)
                continue
            except psycopg.Error as error:
                return await self._one_by_one(group, error)
            except Exception as error:  # a bug: it must still settle every member
                return await self._one_by_one(group, error)
            for member, outcome in zip(group.members, outcomes, strict=True):
                member.settle(outcome)  # first: nothing below may keep an answer back
            self._after_commit(writes)
            return

    def _after_commit(self, writes: Writes) -> None:
        try:
            record_committed(writes)
            if writes.events:
                self._events_committed()
        except Exception:
            log.exception("after a commit: could not count it or wake the event watchers")

    async def _one_by_one(self, group: "_Group", error: BaseException) -> None:
        """An unexpected error in a group: each operation alone, so the error is only the
        one operation's that causes it."""
        if len(group.members) == 1:
            group.members[0].settle(error)
            return
        for member in group.members:
            await self._run_group([member])

    async def _transaction(
        self, conn: store.Conn, group: "_Group"
    ) -> tuple[list[Message | ServiceError], Writes]:
        """The group's transaction, in two round trips: every member's outcome, and what it
        wrote. The connection is in autocommit mode, and BEGIN and COMMIT are sent as
        statements within a pipeline: psycopg's own transaction blocks would add three round
        trips of syncs."""
        try:
            async with conn.pipeline():  # the first round trip, as the block ends
                await store.send_begin(conn, serializable=self._limits.serializable)
                await store.send_local_timeouts(conn, group.lock_ms, group.statement_ms)
                claims = await idempotency.send_claims(conn, group.claims)
                wallets = await wallets_store.send_lock(conn, group.wanted_wallets)
                clock = await wallets_store.send_clock(conn, list(group.wanted_wallets))
                holds = (
                    await holds_store.send_lock(conn, group.hold_ids) if group.hold_ids else None
                )
                refunded = (
                    await ledger_store.send_lock_refunded(conn, group.refunded_ids)
                    if group.refunded_ids
                    else None
                )
            outcomes, writes = await self._decide(
                conn, group, claims, wallets, clock, holds, refunded
            )
            async with conn.pipeline():  # the second: the write, then COMMIT
                written = await ledger_store.send_write(conn, writes)
                await store.send_commit(conn)
            await written.result()
        except BaseException:
            await _end_transaction(conn)
            raise
        return outcomes, writes

    async def _decide(
        self,
        conn: store.Conn,
        group: "_Group",
        claims: store.Pending[dict[tuple[str, str], idempotency.Record]],
        wallets: store.Pending[list[dict[str, Any]]],
        clock: store.Pending[tuple[datetime, dict[UUID, int]]],
        holds: store.Pending[dict[UUID, Hold]] | None,
        refunded: store.Pending[dict[UUID, int]] | None,
    ) -> tuple[list[Message | ServiceError], Writes]:
        """What each member does, from the first round trip's answers, in memory (a replay
        may still read what it needs)."""
        records = await claims.result()
        rows = await wallets.result()
        at, expired = await clock.result()
        locked = wallets_store.locked_rows(rows, expired)
        if any(row.newer_change for row in locked.values()):
            raise StartAgain
        book = Book(
            at=at,
            wallets={id_: _locked(row) for id_, row in locked.items()},
            holds=await holds.result() if holds else {},
            refunded=await refunded.result() if refunded else {},
        )
        outcomes = [await _apply(conn, book, member, records) for member in group.members]
        return outcomes, book.final_writes()

    async def sweep_expired_holds(self, limit: int = 500) -> int:
        """Marks holds past their expiry as EXPIRED, with their events; returns how many.
        They stopped counting the instant they expired; this tidies their status. Safe with
        several instances: each hold is marked once, and a wallet a movement holds right now
        is skipped until the next round."""
        async with self._pool.connection() as conn:
            try:
                await store.send_begin(conn, serializable=self._limits.serializable)
                rows, at, holds = await holds_store.lock_expired(conn, limit)
                if not holds:
                    await store.send_commit(conn)
                    return 0
                assert at is not None
                book = Book(at=at, wallets={id_: _locked(row) for id_, row in rows.items()})
                for hold in holds:
                    book.expire_hold(hold)
                writes = book.final_writes()
                await (await ledger_store.send_write(conn, writes)).result()
                await store.send_commit(conn)
            except BaseException:
                await _end_transaction(conn)
                raise
        record_committed(writes)
        self._events_committed()
        return len(holds)


class _Group:
    """The members of a group that may still start, and what their transaction needs."""

    def __init__(self, members: list[Waiting], limits: Limits) -> None:
        self.limits = limits
        self.members: list[Waiting] = []
        self._timeouts: dict[int, Timeouts] = {}
        for member in members:
            try:
                self._timeouts[id(member)] = timeouts_for(member.call, limits)  # type: ignore[arg-type]
            except ServiceError as error:  # cancelled or out of time while it waited
                member.settle(error)
                continue
            self.members.append(member)
        operations = [member.operation for member in self.members]
        self.lock_ms = min((t.lock_ms for t in self._timeouts.values()), default=1)
        self.statement_ms = min((t.statement_ms for t in self._timeouts.values()), default=1)
        self.claims = [
            (op.principal.subject, op.key, op.fingerprint()) for op in operations if op.key
        ]
        self.wanted_wallets = _wanted(operations)
        self.hold_ids = sorted({id_ for op in operations for id_ in op.hold_ids})
        self.refunded_ids = sorted({id_ for op in operations for id_ in op.refunded_ids})

    def attempt_seconds(self) -> float:
        """How long an attempt may take before the database counts as not answering: its
        lock wait and statements, and a margin."""
        return (self.lock_ms + 2 * self.statement_ms) / 1000 + ATTEMPT_MARGIN_SECONDS

    def after_lock_wait(self) -> "_Group":
        """After a lock wait ran out: the members whose own limit it was are answered (a
        limit set by their deadline or by the server); the others try again."""
        rest = []
        for member in self.members:
            timeouts = self._timeouts[id(member)]
            if timeouts.lock_ms == self.lock_ms or timeouts.statement_ms == self.statement_ms:
                member.settle(_wait_over(timeouts.lock_set_by_deadline))
            else:
                rest.append(member)
        return _Group(rest, self.limits)

    def seconds_left(self) -> float | None:
        """The least time any member's deadline leaves."""
        left = [member.call.time_remaining() for member in self.members]  # type: ignore[attr-defined]
        known = [seconds for seconds in left if seconds is not None]
        return min(known) if known else None

    def settle_all(self, outcome: BaseException) -> None:
        for member in self.members:
            member.settle(outcome)


def _wanted(operations: list[Operation]) -> dict[UUID, str | None]:
    """Each wallet to lock, with the owner it must have: the owner all its operations ask
    for, or any owner once one of them may use any (each is checked against the row later).
    A wallet only a stranger asks for is not even locked, so a stranger cannot make its owner
    wait."""
    wanted: dict[UUID, str | None] = {}
    for operation in operations:
        for wallet_id, owner in operation.wallets().items():
            if wallet_id not in wanted:
                wanted[wallet_id] = owner
            elif wanted[wallet_id] != owner:
                wanted[wallet_id] = None
    return dict(sorted(wanted.items()))


async def _apply(
    conn: store.Conn,
    book: Book,
    member: Waiting,
    records: dict[tuple[str, str], idempotency.Record],
) -> Message | ServiceError:
    """One operation's outcome within the group's transaction."""
    operation = member.operation
    principal, key = operation.principal.subject, operation.key
    request_hash = operation.fingerprint()
    if key is not None:
        record = records[(principal, key)]
        if not record.claimed:
            return await _replay(conn, operation, record)
        if record.used_before:
            try:
                answer = await operation.replay_stored(conn)
            except ServiceError as error:  # the key was used for another request
                book.release_key(principal, key)
                return error
            book.record(Outcome(principal, key, None, answer.SerializeToString()))
            return answer
    try:
        for wallet_id, owner in operation.wallets().items():
            wallet = book.wallets.get(wallet_id)
            if wallet is None or (owner is not None and wallet.user_id != owner):
                raise operation.wallet_not_found(wallet_id)
        answer, transaction_id = operation.apply(book, request_hash)
    except Refusal as refusal:
        if key is not None:
            book.record(
                Outcome(
                    principal,
                    key,
                    None,
                    None,
                    (refusal.reason, refusal.message, refusal.metadata),
                )
            )
        return refusal
    except ServiceError as error:
        if key is not None:
            book.release_key(principal, key)  # refused before it did anything: key unused
        return error
    if key is not None:
        book.record(Outcome(principal, key, transaction_id, answer.SerializeToString()))
    return answer


async def _replay(
    conn: store.Conn, operation: Operation, record: idempotency.Record
) -> Message | ServiceError:
    if record.request_hash != operation.fingerprint():
        return already_exists(
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


async def _end_transaction(conn: store.Conn) -> None:
    """After a failure, the connection goes back to the pool clean, or is closed (the pool
    replaces it). A transaction that fails takes with it the statements PostgreSQL prepared
    in it; psycopg's rollback() forgets them too, so it must be the one to roll back. A
    transaction that failed at COMMIT is over already, and psycopg would still believe in
    them: that connection is closed."""
    await _discard_if_unclean(conn)
    if conn.closed:
        return
    if conn.pgconn.transaction_status == pq.TransactionStatus.IDLE:
        await conn.close()
        return
    try:
        async with asyncio.timeout(ROLLBACK_SECONDS):
            await conn.rollback()
    except (psycopg.Error, TimeoutError):
        await conn.close()  # the error that brought us here is the one to raise
    except asyncio.CancelledError:
        await conn.close()
        raise


async def _discard_if_unclean(conn: store.Conn, force: bool = False) -> None:
    """A connection left in pipeline mode or mid-query (a failure or a cancellation in the
    middle of a pipeline), or one that stopped answering (`force`), must not serve another
    call: close it, and the pool replaces it."""
    pgconn = conn.pgconn
    if (
        force
        or pgconn.pipeline_status != pq.PipelineStatus.OFF
        or pgconn.transaction_status
        not in (
            pq.TransactionStatus.IDLE,
            pq.TransactionStatus.INTRANS,
            pq.TransactionStatus.INERROR,
        )
    ):
        await conn.close()


def connection_lost(error: psycopg.Error) -> bool:
    """The connection failed (no SQLSTATE, class 08) or the server ended it (class 57)."""
    return error.sqlstate is None or error.sqlstate[:2] in ("08", "57")


async def _next_attempt(attempt: int, group: _Group, error: Exception) -> _Group:
    """After an attempt that may be retried: the members that get another, after a short
    pause. The others (out of time, or after the last attempt) are answered with a status
    that says the outcome is unknown, to retry with the same key."""
    answer = _unknown_outcome(error)
    if attempt >= MAX_ATTEMPTS:
        group.settle_all(answer)
        return _Group([], group.limits)
    rest = []
    for member in group.members:
        remaining = member.call.time_remaining()  # type: ignore[attr-defined]
        if remaining is not None and remaining <= MIN_USABLE_SECONDS * 10:
            member.settle(answer)
        else:
            rest.append(member)
    if rest:
        await asyncio.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))
    return _Group(rest, group.limits)


def _outcome_unknown(error: Exception) -> bool:
    """The attempt timed out or lost its connection: it may have committed."""
    return isinstance(error, TimeoutError) or (
        isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
        and connection_lost(error)
    )


def _unknown_outcome(error: Exception) -> ServiceError:
    if isinstance(error, NoConnectionBeforeDeadline):
        return deadline_exceeded(
            "DEADLINE_EXCEEDED", "deadline exceeded while waiting for a database connection"
        )
    if _outcome_unknown(error):
        return _database_unavailable()
    return aborted(
        "CONCURRENT_UPDATE", "lost a race with concurrent updates; retry with the same key"
    )


def _database_unavailable() -> ServiceError:
    return unavailable("DATABASE_UNAVAILABLE", "database unavailable; retry with the same key")
