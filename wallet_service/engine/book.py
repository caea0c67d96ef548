"""The book: what one database transaction has locked, and what it will write.

Operations read and change the book in memory, under the row locks the engine took; the
engine then writes all of it in one statement. Every balance after, sequence number, event
and answer is therefore known before the write, and several operations can share one book.
Each change of a wallet adds its event (the transactional outbox) here, so no operation can
forget one.
"""

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from wallet_service.engine import events
from wallet_service.models import Hold, HoldStatus, Metadata, Transaction, Wallet, WalletStatus
from wallet_service.store.ledger import (
    Outcome,
    Posting,
    StatusChange,
    WalletChange,
    Writes,
)


@dataclass
class LockedWallet:
    id: UUID
    user_id: str
    currency: str
    balance: int
    held: int  # live holds only
    last_sequence: int
    status: WalletStatus
    status_reason: str
    status_changed_at: datetime | None
    created_at: datetime
    metadata: Metadata

    @property
    def available(self) -> int:
        return self.balance - self.held

    def as_wallet(self, at: datetime) -> Wallet:
        return Wallet(
            id=self.id,
            user_id=self.user_id,
            currency=self.currency,
            balance=self.balance,
            held=self.held,
            created_at=self.created_at,
            updated_at=at,
            status=self.status,
            status_reason=self.status_reason,
            status_changed_at=self.status_changed_at,
            metadata=self.metadata,
        )


@dataclass
class Book:
    at: datetime  # when the locks were taken: the operation's time, and the expiry clock
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
            posting = Posting(
                wallet_id,
                transaction.id,
                transaction.type,
                wallet.last_sequence,
                change,
                wallet.balance,
                transaction.created_at,
            )
            self.writes.postings.append(posting)
            self.writes.events.append(events.posted(posting, transaction, wallet.user_id))
        return after

    def place_hold(self, hold: Hold, request_hash: str) -> None:
        wallet = self.wallets[hold.wallet_id]
        wallet.held += hold.amount
        self.writes.new_holds.append((hold, request_hash))
        self.writes.events.append(events.hold_changed(hold, wallet.user_id, self.at))

    def finish_hold(self, finished: Hold, by: str, key: str) -> None:
        """Records a hold captured or voided, releasing all of its amount."""
        wallet = self.wallets[finished.wallet_id]
        wallet.held -= self.holds[finished.id].amount
        self.holds[finished.id] = finished
        self.writes.finished_holds.append((finished, by, key))
        self.writes.events.append(events.hold_changed(finished, wallet.user_id, self.at))

    def expire_hold(self, hold: Hold) -> None:
        """Marks a hold past its expiry as expired (the sweep); it stopped counting already,
        so the live held amount does not change, only the stored one."""
        expired = dataclasses.replace(hold, status=HoldStatus.EXPIRED, finished_at=hold.expires_at)
        self._locked[hold.wallet_id].held += hold.amount  # the stored total included it
        self.writes.finished_holds.append((expired, None, None))
        owner = self.wallets[hold.wallet_id].user_id
        self.writes.events.append(events.hold_changed(expired, owner, self.at))

    def set_status(self, wallet_id: UUID, status: WalletStatus, reason: str, by: str) -> Wallet:
        wallet = self.wallets[wallet_id]
        self.writes.status_changes.append(
            StatusChange(wallet_id, wallet.status, status, reason, by, self.at)
        )
        wallet.status, wallet.status_reason, wallet.status_changed_at = status, reason, self.at
        changed = wallet.as_wallet(self.at)
        self.writes.events.append(events.status_changed(changed, by, self.at))
        return changed

    def raise_refunded(self, transaction_id: UUID, amount: int) -> int:
        self.refunded[transaction_id] += amount
        self.writes.refunded_amounts[transaction_id] = self.refunded[transaction_id]
        return self.refunded[transaction_id]

    def record(self, outcome: Outcome) -> None:
        self.writes.outcomes.append(outcome)

    def release_key(self, principal: str, key: str) -> None:
        """A claimed key whose operation was refused before it did anything (not found, not
        allowed, invalid): the transaction commits for the others, the key stays unused."""
        self.writes.released_keys.append((principal, key))

    def final_writes(self) -> Writes:
        """Everything to write, with each changed wallet's net change."""
        self.writes.wallets = [
            WalletChange(
                wallet_id=id_,
                balance=wallet.balance - before.balance,
                held=wallet.held - before.held,
                entries=wallet.last_sequence - before.last_sequence,
                last_sequence_before=before.last_sequence,
                at=self.at,
                status=wallet.status
                if wallet.status_changed_at != before.status_changed_at
                else None,
                status_reason=wallet.status_reason,
            )
            for id_, wallet in sorted(self.wallets.items())
            if (before := self._locked[id_]) != wallet
        ]
        return self.writes
