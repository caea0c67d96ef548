"""Credit, Debit and Transfer: money into a wallet, out of one, or between two."""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar
from uuid import UUID

from google.protobuf.message import Message

from shared.gen.wallet.v1 import wallet_pb2
from shared.tokens import Principal
from wallet_service.engine.book import Book
from wallet_service.engine.operations.base import (
    Operation,
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


@dataclass
class Movement(Operation):
    kind: ClassVar[TransactionType]
    amount: int = 0
    source: UUID | None = None
    destination: UUID | None = None
    reference: str = ""
    metadata: Metadata = field(default_factory=dict)

    def request_fields(self) -> list[Any]:
        # The fields (and their order) of the hashes already in the ledger: keep them.
        fields = [
            self.kind.value,
            self.amount,
            str(self.source or ""),
            str(self.destination or ""),
            self.reference,
        ]
        return with_metadata(fields, self.metadata)

    def wallets(self) -> dict[UUID, str | None]:
        wanted: dict[UUID, str | None] = {}
        if self.source:  # money leaves only a wallet the caller may use
            wanted[self.source] = usable_owner(self.principal)
        if self.destination:  # and may enter any
            wanted[self.destination] = None
        return wanted

    def apply(self, book: Book, request_hash: str) -> tuple[Message, UUID | None]:
        source = book.wallets[self.source] if self.source else None
        destination = book.wallets[self.destination] if self.destination else None
        check_payment(source, destination, self.amount)
        transaction = self.new_transaction(
            book,
            self.kind,
            self.amount,
            self.source,
            self.destination,
            self.reference,
            self.metadata,
        )
        after = book.post(transaction, request_hash)
        return answer(self.principal, transaction, after, book.wallets), transaction.id

    async def replay_stored(self, conn: Conn) -> Message:
        made = await ledger_store.made_with_key(conn, self.principal.subject, self.key or "")
        if made is None or len(made.transactions) != 1:
            raise key_reused()
        transaction = made.transactions[0]
        if (made.request_hash or _legacy_fingerprint(transaction)) != self.fingerprint():
            raise key_reused()
        owners = await owners_of(conn, list(made.balances_after))
        return answer(self.principal, transaction, made.balances_after, owners)


@dataclass
class Credit(Movement):
    kind: ClassVar[TransactionType] = TransactionType.CREDIT
    response_type: ClassVar[type[Message]] = wallet_pb2.CreditResponse


@dataclass
class Debit(Movement):
    kind: ClassVar[TransactionType] = TransactionType.DEBIT
    response_type: ClassVar[type[Message]] = wallet_pb2.DebitResponse


@dataclass
class Transfer(Movement):
    kind: ClassVar[TransactionType] = TransactionType.TRANSFER
    response_type: ClassVar[type[Message]] = wallet_pb2.TransferResponse


def answer(
    principal: Principal, transaction: Transaction, after: dict[UUID, int], owners: dict[UUID, Any]
) -> Message:
    """The answer, with balances after only for wallets the caller may read: a crediting
    service is not told a user's balance, nor a payer the payee's."""
    message = transaction_message(transaction, principal)
    visible = {
        wallet_id: balance
        for wallet_id, balance in after.items()
        if may_use_wallet_of(principal, owners[wallet_id].user_id)
    }
    source, destination = transaction.source_wallet_id, transaction.destination_wallet_id
    if source and destination:
        return wallet_pb2.TransferResponse(
            transaction=message,
            source_balance_after=after[source],
            destination_balance_after=visible.get(destination),
        )
    if source:
        return wallet_pb2.DebitResponse(transaction=message, balance_after=visible.get(source, 0))
    assert destination is not None
    return wallet_pb2.CreditResponse(transaction=message, balance_after=visible.get(destination, 0))


def _legacy_fingerprint(transaction: Transaction) -> str:
    """The hash a movement from before request hashes were stored would have had."""
    fields = [
        transaction.type.value,
        transaction.amount,
        str(transaction.source_wallet_id or ""),
        str(transaction.destination_wallet_id or ""),
        transaction.reference,
    ]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()
