"""ExecuteBatch: up to 100 credits, debits and transfers under one key, all or nothing.

The batch locks the union of its wallets in the global order (ascending ids), then applies
its movements in their order against the book: the balances each sees include the earlier
ones. Any refusal refuses the whole batch (nothing is written) and names the movement's
index; each movement is checked with its own permissions.
"""

from dataclasses import dataclass, field
from typing import Any, ClassVar
from uuid import UUID

from google.protobuf.message import Message

from shared.errors import ServiceError, not_found
from shared.gen.wallet.v1 import wallet_pb2
from wallet_service.engine.book import Book
from wallet_service.engine.operations.base import (
    Operation,
    Refusal,
    check_payment,
    key_reused,
    owners_of,
    with_metadata,
)
from wallet_service.messages import transaction_message
from wallet_service.models import Metadata, Transaction, TransactionType
from wallet_service.permissions import may_use_wallet_of, usable_owner
from wallet_service.store import Conn
from wallet_service.store import ledger as ledger_store

MAX_MOVEMENTS = 100


@dataclass(frozen=True)
class Leg:
    """One movement of a batch."""

    kind: TransactionType  # CREDIT, DEBIT or TRANSFER
    amount: int
    source: UUID | None
    destination: UUID | None
    reference: str = ""
    metadata: Metadata = field(default_factory=dict)

    def request_fields(self) -> list[Any]:
        fields = [self.kind.value, self.amount, self.source, self.destination, self.reference]
        return with_metadata(fields, self.metadata)


@dataclass
class Batch(Operation):
    legs: list[Leg] = field(default_factory=list)

    response_type: ClassVar[type[Message]] = wallet_pb2.ExecuteBatchResponse

    def request_fields(self) -> list[Any]:
        return ["ExecuteBatch", [leg.request_fields() for leg in self.legs]]

    def wallets(self) -> dict[UUID, str | None]:
        """Every wallet of the batch; one that money leaves must be the caller's (or any,
        for wallet:admin), even where another movement only pays into it."""
        wanted: dict[UUID, str | None] = {}
        for leg in self.legs:
            if leg.destination and leg.destination not in wanted:
                wanted[leg.destination] = None
        for leg in self.legs:
            if leg.source:
                wanted[leg.source] = usable_owner(self.principal)
        return wanted

    def wallet_not_found(self, wallet_id: UUID) -> ServiceError:
        index = next(
            i for i, leg in enumerate(self.legs) if wallet_id in (leg.source, leg.destination)
        )
        return not_found("WALLET_NOT_FOUND", f"wallet {wallet_id} not found", index=index)

    def apply(self, book: Book, request_hash: str) -> tuple[Message, UUID | None]:
        self._check_all(book)
        transactions = []
        for index, leg in enumerate(self.legs):
            transaction = self.new_transaction(
                book,
                leg.kind,
                leg.amount,
                leg.source,
                leg.destination,
                leg.reference,
                leg.metadata,
                batch_index=index,
            )
            book.post(transaction, request_hash)
            transactions.append(transaction)
        after = {wallet_id: wallet.balance for wallet_id, wallet in book.wallets.items()}
        return self._answer(transactions, after, book.wallets), transactions[0].id

    def _check_all(self, book: Book) -> None:
        """Checks every movement in order against the balances the earlier ones leave,
        without changing the book: a refusal names its movement."""
        balances = {wallet_id: wallet.balance for wallet_id, wallet in book.wallets.items()}
        try:
            for index, leg in enumerate(self.legs):
                source = book.wallets[leg.source] if leg.source else None
                destination = book.wallets[leg.destination] if leg.destination else None
                try:
                    check_payment(source, destination, leg.amount)
                except Refusal as refusal:
                    raise Refusal(
                        refusal.reason, refusal.message, **refusal.metadata, index=index
                    ) from None
                if source:
                    source.balance -= leg.amount
                if destination:
                    destination.balance += leg.amount
        finally:
            for wallet_id, balance in balances.items():
                book.wallets[wallet_id].balance = balance

    def _answer(
        self, transactions: list[Transaction], after: dict[UUID, int], owners: dict[UUID, Any]
    ) -> Message:
        return wallet_pb2.ExecuteBatchResponse(
            transactions=[transaction_message(t, self.principal) for t in transactions],
            balances_after=[
                wallet_pb2.WalletBalance(wallet_id=str(wallet_id), balance_after=balance)
                for wallet_id, balance in sorted(after.items())
                if may_use_wallet_of(self.principal, owners[wallet_id].user_id)
            ],
        )

    async def replay_stored(self, conn: Conn) -> Message:
        made = await ledger_store.made_with_key(conn, self.principal.subject, self.key or "")
        if made is None or made.request_hash != self.fingerprint():
            raise key_reused()
        owners = await owners_of(conn, list(made.balances_after))
        return self._answer(made.transactions, made.balances_after, owners)
