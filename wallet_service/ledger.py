"""Moving money: each Credit, Debit and Transfer is one PostgreSQL transaction.

In that transaction: claim the caller's idempotency key (or replay its first outcome), lock
the wallet row(s) with SELECT ... FOR UPDATE in ascending id order (so two opposite transfers
cannot deadlock), check, update the balance(s), append the immutable transaction and ledger
rows with the balance after, record the outcome under the key, commit.

A final business failure (insufficient funds, currency mismatch, overflow) is recorded under
the key too, and replayed: the first outcome of a key is final. Serialization failures and
deadlocks are retried here with backoff; if they persist the caller gets ABORTED, never a
business error.
"""

import asyncio
import hashlib
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg_pool
from psycopg import errors as pg_errors

from shared.errors import (
    ServiceError,
    aborted,
    already_exists,
    deadline_exceeded,
    failed_precondition,
    not_found,
)
from shared.tokens import Principal
from wallet_service import repository as repo
from wallet_service.models import Movement, MovementResult, Wallet
from wallet_service.permissions import usable_owner

INT64_MAX = 2**63 - 1
MAX_ATTEMPTS = 5
# Time kept back from the client's deadline to answer before it passes.
DEADLINE_MARGIN_SECONDS = 0.1


@dataclass(frozen=True)
class Limits:
    """Bounds on how long a movement may wait for locks when the client sets no deadline."""

    lock_timeout_seconds: float = 5.0
    statement_timeout_seconds: float = 10.0


TimeRemaining = Callable[[], float | None]


async def move_money(
    pool: psycopg_pool.AsyncConnectionPool[Any],
    principal: Principal,
    movement: Movement,
    idempotency_key: str,
    time_remaining: TimeRemaining,
    limits: Limits = Limits(),
) -> MovementResult:
    request_hash = _fingerprint(movement)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            async with pool.connection() as conn, conn.transaction():
                await _bound_waits(conn, time_remaining(), limits)
                outcome = await _move_once(conn, principal, movement, idempotency_key, request_hash)
            break
        except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
            remaining = time_remaining()
            if attempt == MAX_ATTEMPTS or (remaining is not None and remaining < 0.1):
                raise aborted(
                    "CONCURRENT_UPDATE",
                    "lost a race with concurrent updates; retry with the same key",
                ) from None
            await asyncio.sleep(random.uniform(0, min(0.2, 0.01 * 2**attempt)))
        except (pg_errors.LockNotAvailable, pg_errors.QueryCanceled):
            remaining = time_remaining()
            if remaining is not None and remaining <= 2 * DEADLINE_MARGIN_SECONDS:
                raise deadline_exceeded(
                    "DEADLINE_EXCEEDED", "the deadline passed while waiting for the wallet"
                ) from None
            raise aborted("LOCK_TIMEOUT", "the wallet is busy; retry with the same key") from None
    if isinstance(outcome, ServiceError):
        raise outcome
    return outcome


def _fingerprint(movement: Movement) -> str:
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


async def _bound_waits(conn: repo.Conn, remaining: float | None, limits: Limits) -> None:
    lock_timeout = limits.lock_timeout_seconds
    statement_timeout = limits.statement_timeout_seconds
    if remaining is not None:
        usable = remaining - DEADLINE_MARGIN_SECONDS
        if usable <= 0:
            raise deadline_exceeded("DEADLINE_EXCEEDED", "the deadline is too close to start")
        lock_timeout = min(lock_timeout, usable)
        statement_timeout = min(statement_timeout, usable)
    await repo.set_local_timeouts(
        conn, max(1, round(lock_timeout * 1000)), max(1, round(statement_timeout * 1000))
    )


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
        principal.subject,
    )
    owners = {wallet_id: wallet.user_id for wallet_id, wallet in wallets.items()}
    return MovementResult(transaction, balances_after, owners, replayed=False)


async def _replay(
    conn: repo.Conn, record: dict[str, Any], request_hash: str
) -> MovementResult | ServiceError:
    if record["request_hash"] != request_hash:
        raise already_exists(
            "IDEMPOTENCY_KEY_REUSED",
            "this idempotency key was used for a different request; use a new key",
        )
    if record["status"] == "failed":
        return failed_precondition(
            record["error_reason"], record["error_message"], **record["error_metadata"]
        )
    transaction = await repo.get_transaction(conn, record["transaction_id"])
    assert transaction is not None, "an idempotency record points at its transaction"
    balances = repo.stored_balances(record)
    owners = await repo.wallet_owners(conn, list(balances))
    return MovementResult(transaction, balances, owners, replayed=True)


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
    source = wallets.get(movement.source_wallet_id) if movement.source_wallet_id else None
    destination = (
        wallets.get(movement.destination_wallet_id) if movement.destination_wallet_id else None
    )
    if source and destination and source.currency != destination.currency:
        return failed_precondition(
            "CURRENCY_MISMATCH",
            f"cannot transfer {source.currency} into a {destination.currency} wallet",
        )
    if source and source.balance < movement.amount:
        return failed_precondition(
            "INSUFFICIENT_FUNDS", "the balance is lower than the amount", wallet_id=source.id
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
