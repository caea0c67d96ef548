"""Moving money: each Credit, Debit and Transfer is one PostgreSQL transaction.

In that transaction: claim the caller's idempotency key (or replay its first outcome), lock
the wallet row(s) with SELECT ... FOR UPDATE in ascending id order (so two opposite transfers
cannot deadlock), check, update the balance(s), append the immutable transaction and ledger
rows with the balance after and each wallet's next sequence number, record the outcome under
the key, commit.

A final business failure (insufficient funds, currency mismatch, overflow) is recorded under
the key too, and replayed: the first outcome of a key is final. A succeeded key stays unique
forever: the ledger itself refuses a second transaction with it, and a retry long after the
idempotency record was cleaned up replays from the ledger.

Whatever goes wrong after the transaction started is resolved here where it can be, always by
trying again with the same key on a fresh connection, whose claim finds what the first attempt
committed, if anything: a lost connection (perhaps around COMMIT), a serialization failure or a
deadlock. What cannot be resolved is answered UNAVAILABLE or ABORTED, which tell the client
that the outcome is unknown and to retry with the same key.
"""

import asyncio
import contextlib
import hashlib
import json
import math
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import grpc
import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from shared.deadlines import answer_margin
from shared.errors import (
    ServiceError,
    aborted,
    already_exists,
    deadline_exceeded,
    failed_precondition,
    not_found,
    unavailable,
)
from shared.tokens import Principal
from wallet_service import repository as repo
from wallet_service.models import Movement, MovementResult, Wallet
from wallet_service.permissions import usable_owner

INT64_MAX = 2**63 - 1
# Lost races are retried this many times at most (always within the client's deadline): a
# hot wallet in SERIALIZABLE mode makes every waiting transaction lose to the one before it.
MAX_ATTEMPTS = 20
# Below this there is no point starting: not even an uncontended movement fits.
MIN_USABLE_SECONDS = 0.002
# The longest a movement waits for the earlier ones of this process on the same wallet when
# the client sets no deadline: they are making progress, unlike a row lock someone holds.
TURN_TIMEOUT_SECONDS = 10.0
# The unique index that makes a succeeded key unique forever (migration 0003).
ONE_TRANSACTION_PER_KEY = "transactions_one_per_caller_key"


@dataclass(frozen=True)
class Limits:
    """Bounds on how long a movement may wait for locks when the client sets no deadline."""

    lock_timeout_seconds: float = 5.0
    statement_timeout_seconds: float = 10.0


class Call(Protocol):
    """What the ledger needs of the RPC it serves (grpc's ServicerContext has both)."""

    def time_remaining(self) -> float | None: ...

    def cancelled(self) -> bool: ...


@dataclass(frozen=True)
class Timeouts:
    """How long one movement may wait: for its turn on a wallet in this process, for a
    row lock, for a statement. A bound set by the client's deadline ends as
    DEADLINE_EXCEEDED; one set by the server's own limits as ABORTED LOCK_TIMEOUT."""

    turn_seconds: float
    lock_ms: int
    statement_ms: int
    turn_set_by_deadline: bool
    lock_set_by_deadline: bool


class WalletTurns:
    """Movements of this process that touch the same wallet take turns here, in arrival order,
    before they go to the database. The database's row locks still decide between processes;
    this keeps a hot wallet from holding a pool connection per waiting call, and keeps the
    transactions queued behind one another from all losing to it in SERIALIZABLE mode.
    Turns are taken in ascending wallet id order, like the row locks."""

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


async def move_money(
    pool: psycopg_pool.AsyncConnectionPool[Any],
    turns: WalletTurns,
    principal: Principal,
    movement: Movement,
    idempotency_key: str,
    call: Call,
    limits: Limits = Limits(),
) -> MovementResult:
    async with turns.take(movement.wallet_ids, timeouts_for(call, limits)):
        return await _move_in_turn(pool, principal, movement, idempotency_key, call, limits)


async def _move_in_turn(
    pool: psycopg_pool.AsyncConnectionPool[Any],
    principal: Principal,
    movement: Movement,
    idempotency_key: str,
    call: Call,
    limits: Limits,
) -> MovementResult:
    request_hash = fingerprint(movement)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            async with pool.connection() as conn:
                timeouts = timeouts_for(call, limits)  # checked again after any pool wait
                async with conn.transaction():
                    await repo.set_local_timeouts(conn, timeouts.lock_ms, timeouts.statement_ms)
                    outcome = await _move_once(
                        conn, principal, movement, idempotency_key, request_hash
                    )
            break
        except (pg_errors.LockNotAvailable, pg_errors.QueryCanceled):
            raise _wait_over(timeouts.lock_set_by_deadline) from None
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as error:
            await _before_retry(attempt, call, error)
        except pg_errors.UniqueViolation as error:
            if error.diag.constraint_name != ONE_TRANSACTION_PER_KEY:
                raise
            # Another request with this key committed first: the next claim replays it.
            await _before_retry(attempt, call, error)
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            if not connection_lost(error):
                raise
            # Perhaps committed, perhaps not: the next attempt's claim finds out.
            await _before_retry(attempt, call, error)
    if isinstance(outcome, ServiceError):
        raise outcome
    return outcome


def fingerprint(movement: Movement) -> str:
    """What a key is bound to: the same key with another request is refused."""
    canonical = json.dumps(
        [
            movement.type.value,
            movement.amount,
            str(movement.source_wallet_id or ""),
            str(movement.destination_wallet_id or ""),
            movement.reference,
        ]
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def connection_lost(error: psycopg.Error) -> bool:
    """The connection failed (no SQLSTATE, class 08) or the server ended it (class 57)."""
    return error.sqlstate is None or error.sqlstate[:2] in ("08", "57")


def timeouts_for(call: Call, limits: Limits) -> Timeouts:
    """How long the movement may wait; refuses to start for a call that is cancelled or
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


async def _move_once(
    conn: repo.Conn,
    principal: Principal,
    movement: Movement,
    key: str,
    request_hash: str,
) -> MovementResult | ServiceError:
    record = await repo.claim_idempotency_key(conn, principal.subject, key, request_hash)
    if not record["claimed"]:
        return await _replay(conn, record, request_hash)
    if record["ledger_transaction_id"] is not None:
        return await _replay_from_ledger(
            conn, principal, key, record["ledger_transaction_id"], request_hash
        )
    wallets = await _lock_wallets(conn, principal, movement)
    failure = _business_failure(movement, wallets)
    if failure is not None:
        await repo.record_failure(
            conn, principal.subject, key, failure.reason, failure.message, failure.metadata
        )
        return failure
    transaction, balances_after = await repo.apply_movement(
        conn,
        uuid.uuid4(),
        movement,
        _balance_changes(movement),
        wallets[movement.wallet_ids[0]].currency,
        key,
        request_hash,
        principal.subject,
    )
    owners = {wallet_id: wallet.user_id for wallet_id, wallet in wallets.items()}
    return MovementResult(transaction, balances_after, owners, replayed=False)


def _refuse_reuse() -> ServiceError:
    return already_exists(
        "IDEMPOTENCY_KEY_REUSED",
        "this idempotency key was used for a different request; use a new key",
    )


async def _replay(
    conn: repo.Conn, record: dict[str, Any], request_hash: str
) -> MovementResult | ServiceError:
    if record["request_hash"] != request_hash:
        raise _refuse_reuse()
    if record["status"] == "failed":
        return failed_precondition(
            record["error_reason"], record["error_message"], **record["error_metadata"]
        )
    transaction = await repo.get_transaction(conn, record["transaction_id"])
    assert transaction is not None, "an idempotency record points at its transaction"
    balances = repo.stored_balances(record)
    owners = await repo.wallet_owners(conn, list(balances))
    return MovementResult(transaction, balances, owners, replayed=True)


async def _replay_from_ledger(
    conn: repo.Conn, principal: Principal, key: str, transaction_id: UUID, request_hash: str
) -> MovementResult:
    """The key's record was cleaned up, but its transaction is in the ledger for good: answer
    it again, and record it under the key again so the next retry is quick."""
    transaction, stored_hash, balances = await repo.ledger_outcome(conn, transaction_id)
    if (stored_hash or fingerprint(_requested(transaction))) != request_hash:
        raise _refuse_reuse()
    await repo.record_success(conn, principal.subject, key, transaction.id, balances)
    owners = await repo.wallet_owners(conn, list(balances))
    return MovementResult(transaction, balances, owners, replayed=True)


def _requested(transaction: Any) -> Movement:
    """The request a transaction was made from (its fields are those of the fingerprint)."""
    return Movement(
        type=transaction.type,
        amount=transaction.amount,
        source_wallet_id=transaction.source_wallet_id,
        destination_wallet_id=transaction.destination_wallet_id,
        reference=transaction.reference,
    )


async def _lock_wallets(
    conn: repo.Conn, principal: Principal, movement: Movement
) -> dict[UUID, Wallet]:
    """Locks each wallet in ascending id order: every movement takes locks in the same order.

    Money leaves only a wallet the caller may use: another user's source wallet is not even
    locked, and looks absent (NOT_FOUND). Money may enter any wallet.
    """
    wallets = {}
    for wallet_id in sorted(movement.wallet_ids):
        owner = usable_owner(principal) if wallet_id == movement.source_wallet_id else None
        wallet = await repo.lock_wallet(conn, wallet_id, owner)
        if wallet is None:
            raise not_found("WALLET_NOT_FOUND", f"wallet {wallet_id} not found")
        wallets[wallet_id] = wallet
    return wallets


def _business_failure(movement: Movement, wallets: dict[UUID, Wallet]) -> ServiceError | None:
    """The refusal this movement gets, if any. Funds are checked before the currency, so a
    transfer cannot learn the currency of someone else's wallet without the money to move."""
    source = wallets.get(movement.source_wallet_id) if movement.source_wallet_id else None
    destination = (
        wallets.get(movement.destination_wallet_id) if movement.destination_wallet_id else None
    )
    if source and source.balance < movement.amount:
        return failed_precondition(
            "INSUFFICIENT_FUNDS", "the balance is lower than the amount", wallet_id=source.id
        )
    if source and destination and source.currency != destination.currency:
        return failed_precondition(
            "CURRENCY_MISMATCH", "the destination wallet holds another currency"
        )
    if destination and destination.balance > INT64_MAX - movement.amount:
        return failed_precondition(
            "BALANCE_OVERFLOW",
            "the balance would exceed the largest int64",
            wallet_id=destination.id,
        )
    return None


def _balance_changes(movement: Movement) -> list[tuple[UUID, int]]:
    changes = []
    if movement.source_wallet_id:
        changes.append((movement.source_wallet_id, -movement.amount))
    if movement.destination_wallet_id:
        changes.append((movement.destination_wallet_id, movement.amount))
    return changes
