"""The book: what one database transaction has locked, and what it will write.

Operations read and change the book in memory, under the row locks the engine took; the
engine then writes all of it in one statement. Every balance after, sequence number and
answer is therefore known before the write, and several operations can share one book.
"""

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from wallet_service.models import Hold, Transaction
from wallet_service.store.ledger import Outcome, Posting, WalletChange, Writes


@dataclass
class LockedWallet:
    id: UUID
    user_id: str
    currency: str
    balance: int
    held: int  # live holds only
    last_sequence: int

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass
class Book:
    at: datetime  # when the locks were taken: the movement's time, and the expiry clock
    wallets: dict[UUID, LockedWallet]
    holds: dict[UUID, Hold] = field(default_factory=dict)
    refunded: dict[UUID, int] = field(default_factory=dict)  # locked refunded totals
    writes: Writes = field(default_factory=Writes)
    _locked: dict[UUID, LockedWallet] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._locked = {id_: dataclasses.replace(w) for id_, w in self.wallets.items()}

    def post(self, transaction: Transaction, request_hash: str) -> dict[UUID, int]:
        """Records a transaction and moves its amount from its source to its destination;
        returns each touched wallet's balance after it."""
        self.writes.transactions.append((transaction, request_hash))
        changes = []
        if transaction.source_wallet_id:
            changes.append((transaction.source_wallet_id, -transaction.amount))
        if transaction.destination_wallet_id:
            changes.append((transaction.destination_wallet_id, transaction.amount))
        after = {}
        for wallet_id, change in sorted(changes):
            wallet = self.wallets[wallet_id]
            wallet.balance += change
            wallet.last_sequence += 1
            after[wallet_id] = wallet.balance
            self.writes.postings.append(
                Posting(
                    wallet_id,
                    transaction.id,
                    transaction.type,
                    wallet.last_sequence,
                    change,
                    wallet.balance,
                    transaction.created_at,
                )
            )
        return after

    def place_hold(self, hold: Hold, request_hash: str) -> None:
        self.wallets[hold.wallet_id].held += hold.amount
        self.writes.new_holds.append((hold, request_hash))

    def finish_hold(self, finished: Hold, by: str, key: str) -> None:
        """Records a hold captured or voided, releasing all of its amount."""
        self.wallets[finished.wallet_id].held -= self.holds[finished.id].amount
        self.holds[finished.id] = finished
        self.writes.finished_holds.append((finished, by, key))

    def raise_refunded(self, transaction_id: UUID, amount: int) -> int:
        self.refunded[transaction_id] += amount
        self.writes.refunded_amounts[transaction_id] = self.refunded[transaction_id]
        return self.refunded[transaction_id]

    def record(self, outcome: Outcome) -> None:
        self.writes.outcomes.append(outcome)

    def final_writes(self) -> Writes:
        """Everything to write, with each changed wallet's net change."""
        self.writes.wallets = [
            WalletChange(
                wallet_id=id_,
                balance=wallet.balance - before.balance,
                held=wallet.held - before.held,
                entries=wallet.last_sequence - before.last_sequence,
                last_sequence_before=before.last_sequence,
            )
            for id_, wallet in sorted(self.wallets.items())
            if (before := self._locked[id_]) != wallet
        ]
        return self.writes
