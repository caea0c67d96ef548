"""The wallet service's domain values, as the repository returns them."""

import enum
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


class TransactionType(enum.StrEnum):
    CREDIT = "credit"
    DEBIT = "debit"
    TRANSFER = "transfer"


@dataclass(frozen=True)
class Wallet:
    id: UUID
    user_id: str
    currency: str
    balance: int
    created_at: datetime
    updated_at: datetime


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


@dataclass(frozen=True)
class LedgerEntry:
    sequence: int  # 1, 2, 3, ... within the wallet, with no gap
    wallet_id: UUID
    transaction: Transaction
    amount: int  # signed change of the wallet's balance
    balance_after: int


@dataclass(frozen=True)
class Movement:
    """A requested money movement: what the idempotency key is bound to."""

    type: TransactionType
    amount: int
    source_wallet_id: UUID | None
    destination_wallet_id: UUID | None
    reference: str

    @property
    def wallet_ids(self) -> list[UUID]:
        return [id_ for id_ in (self.source_wallet_id, self.destination_wallet_id) if id_]


@dataclass(frozen=True)
class MovementResult:
    transaction: Transaction
    balances_after: dict[UUID, int]  # every wallet the movement touched
    owners: dict[UUID, str]  # the user id of each of those wallets
    replayed: bool  # True when an earlier request with the same key produced it
