"""What every money operation is, and the checks they share.

An operation is built from a validated request and its caller. The engine (runner.py) claims
its key, takes its locks, then calls `apply` with the book of locked rows; `apply` either
raises a `Refusal` (a final business outcome, recorded under the key) or changes the book
and returns the answer. Any other error leaves the key unused. All checks come before any
change of the book, so a refusal leaves the book as it found it.
"""

import hashlib
import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID

from google.protobuf.message import Message

from shared.errors import ServiceError, already_exists, failed_precondition, not_found
from shared.tokens import Principal
from wallet_service.engine.book import Book, LockedWallet
from wallet_service.models import Metadata, Transaction, TransactionType, WalletStatus
from wallet_service.store import Conn
from wallet_service.store import wallets as wallets_store

INT64_MAX = 2**63 - 1


class Refusal(ServiceError):
    """A final business outcome (FAILED_PRECONDITION), recorded and replayed under the key."""

    def __init__(self, reason: str, message: str, **metadata: object) -> None:
        error = failed_precondition(reason, message, **metadata)
        super().__init__(error.code, error.reason, error.message, **metadata)


def key_reused() -> ServiceError:
    return already_exists(
        "IDEMPOTENCY_KEY_REUSED",
        "this idempotency key was used for a different request; use a new key",
    )


@dataclass
class Operation(ABC):
    principal: Principal
    key: str | None  # None only for an operation that is idempotent by nature

    response_type: ClassVar[type[Message]]
    needs_preparing: ClassVar[bool] = False
    hold_ids: list[UUID] = field(default_factory=list, init=False)
    refunded_ids: list[UUID] = field(default_factory=list, init=False)

    @abstractmethod
    def request_fields(self) -> list[Any]:
        """What the key is bound to: the same key with other fields is refused."""

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.request_fields(), default=str).encode()).hexdigest()

    @abstractmethod
    def wallets(self) -> dict[UUID, str | None]:
        """The wallets to lock, each with the owner it must have (None: any owner)."""

    def wallet_not_found(self, wallet_id: UUID) -> ServiceError:
        """The error for a wanted wallet that does not exist (or is not the caller's)."""
        return not_found("WALLET_NOT_FOUND", f"wallet {wallet_id} not found")

    async def prepare(self, conn: Conn) -> None:  # noqa: B027 (a hook most do not need)
        """Reads what the operation needs to know before it takes locks (which wallets)."""

    @abstractmethod
    def apply(self, book: Book, request_hash: str) -> tuple[Message, UUID | None]:
        """Checks and changes the book; returns the answer and the transaction it made."""

    @abstractmethod
    async def replay_stored(self, conn: Conn) -> Message:
        """The answer again, for a key whose record was cleaned up after it succeeded (or
        recorded before answers were kept): rebuilt from what the key made."""

    def new_transaction(
        self,
        book: Book,
        type_: TransactionType,
        amount: int,
        source: UUID | None,
        destination: UUID | None,
        reference: str,
        metadata: Metadata,
        *,
        hold_id: UUID | None = None,
        refund_of: UUID | None = None,
        batch_index: int = 0,
    ) -> Transaction:
        wallet_id = source or destination
        assert wallet_id is not None and self.key is not None
        return Transaction(
            id=uuid.uuid4(),
            type=type_,
            amount=amount,
            currency=book.wallets[wallet_id].currency,
            source_wallet_id=source,
            destination_wallet_id=destination,
            idempotency_key=self.key,
            reference=reference,
            requested_by=self.principal.subject,
            created_at=book.at,
            hold_id=hold_id,
            refund_of=refund_of,
            metadata=metadata,
            batch_index=batch_index,
        )


def with_metadata(fields: list[Any], metadata: Metadata) -> list[Any]:
    """Request fields with the metadata, when there is any: the hashes of requests without
    metadata stay what they were before metadata existed."""
    return [*fields, sorted(metadata.items())] if metadata else fields


def check_payment(
    source: LockedWallet | None,
    destination: LockedWallet | None,
    amount: int,
    *,
    reserved: int = 0,
) -> None:
    """Whether `amount` may go from `source` (None: from outside) to `destination` (None: out
    of the system); `reserved` is what a hold already set aside for it. The destination's
    currency is checked after the funds, so that a caller cannot learn the currency of
    someone else's wallet without the money to move, and no message names a currency."""
    if source:
        check_may_pay(source)
        if source.available + reserved < amount:
            raise Refusal(
                "INSUFFICIENT_FUNDS",
                "the available balance is lower than the amount",
                wallet_id=source.id,
            )
    if destination:
        check_may_receive(destination)
    if source and destination and source.currency != destination.currency:
        raise Refusal("CURRENCY_MISMATCH", "the destination wallet holds another currency")
    if destination and destination.balance > INT64_MAX - amount:
        raise Refusal(
            "BALANCE_OVERFLOW",
            "the balance would exceed the largest int64",
            wallet_id=destination.id,
        )


def check_may_pay(wallet: LockedWallet) -> None:
    if not wallet.status.may_pay:
        raise _status_refusal(wallet)


def check_may_receive(wallet: LockedWallet) -> None:
    if not wallet.status.may_receive:
        raise _status_refusal(wallet)


def _status_refusal(wallet: LockedWallet) -> Refusal:
    if wallet.status == WalletStatus.CLOSED:
        return Refusal("WALLET_CLOSED", "the wallet is closed", wallet_id=wallet.id)
    return Refusal(
        "WALLET_FROZEN",
        f"the wallet is {wallet.status.value.replace('_', ' ')}",
        wallet_id=wallet.id,
        status=wallet.status.value.upper(),
    )


@dataclass(frozen=True)
class Owner:
    """A wallet's owner, for answers rebuilt outside a book."""

    user_id: str


async def owners_of(conn: Conn, wallet_ids: list[UUID]) -> dict[UUID, Owner]:
    owners = await wallets_store.wallet_owners(conn, wallet_ids)
    return {wallet_id: Owner(user_id) for wallet_id, user_id in owners.items()}


def now() -> datetime:
    return datetime.now(UTC)
