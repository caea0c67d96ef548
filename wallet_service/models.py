"""The wallet service's domain values, as the store returns them."""

import enum
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID


class TransactionType(enum.StrEnum):
    CREDIT = "credit"
    DEBIT = "debit"
    TRANSFER = "transfer"
    CAPTURE = "capture"
    REFUND = "refund"


class WalletStatus(enum.StrEnum):
    ACTIVE = "active"
    DEBITS_FROZEN = "debits_frozen"  # no money out, holds included
    FROZEN = "frozen"  # nothing in or out
    CLOSED = "closed"  # final

    @property
    def may_pay(self) -> bool:
        return self == WalletStatus.ACTIVE

    @property
    def may_receive(self) -> bool:
        return self in (WalletStatus.ACTIVE, WalletStatus.DEBITS_FROZEN)


Metadata = dict[str, str]


class HoldStatus(enum.StrEnum):
    HELD = "held"
    CAPTURED = "captured"
    VOIDED = "voided"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Wallet:
    id: UUID
    user_id: str
    currency: str
    balance: int
    held: int  # the amounts of its live holds
    created_at: datetime
    updated_at: datetime
    status: WalletStatus = WalletStatus.ACTIVE
    status_reason: str = ""
    status_changed_at: datetime | None = None
    metadata: Metadata = field(default_factory=dict)

    @property
    def available_balance(self) -> int:
        return self.balance - self.held


@dataclass(frozen=True)
class Transaction:
    id: UUID
    type: TransactionType
    amount: int
    currency: str
    source_wallet_id: UUID | None
    destination_wallet_id: UUID | None
    idempotency_key: str
    reference: str
    requested_by: str
    created_at: datetime
    hold_id: UUID | None = None  # a capture's hold
    refund_of: UUID | None = None  # a refund's original
    refunded_amount: int = 0  # how much of it has been refunded
    metadata: Metadata = field(default_factory=dict)
    batch_index: int = 0  # its place in an ExecuteBatch

    @property
    def wallet_ids(self) -> list[UUID]:
        return [id_ for id_ in (self.source_wallet_id, self.destination_wallet_id) if id_]


@dataclass(frozen=True)
class LedgerEntry:
    sequence: int  # 1, 2, 3, ... within the wallet, with no gap
    wallet_id: UUID
    transaction: Transaction
    amount: int  # signed change of the wallet's balance
    balance_after: int


@dataclass(frozen=True)
class Hold:
    id: UUID
    wallet_id: UUID
    destination_wallet_id: UUID | None
    amount: int
    currency: str
    status: HoldStatus  # as stored: a HELD hold past its expiry is EXPIRED all the same
    captured_amount: int
    expires_at: datetime
    requested_by: str
    idempotency_key: str
    reference: str
    capture_transaction_id: UUID | None
    created_at: datetime
    finished_at: datetime | None
    metadata: Metadata = field(default_factory=dict)

    def status_at(self, now: datetime) -> HoldStatus:
        """Its status at `now`: a hold is EXPIRED from the instant its expiry passes."""
        if self.status == HoldStatus.HELD and self.expires_at <= now:
            return HoldStatus.EXPIRED
        return self.status

    def finished_at_or_expiry(self, now: datetime) -> datetime | None:
        if self.status_at(now) == HoldStatus.EXPIRED and self.finished_at is None:
            return self.expires_at
        return self.finished_at

    @property
    def wallet_ids(self) -> list[UUID]:
        return [id_ for id_ in (self.wallet_id, self.destination_wallet_id) if id_]
