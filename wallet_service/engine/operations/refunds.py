"""Refunds: money back the way it came. A transfer's (or a capture's) destination pays its
source back; a debit's (or a capture's without destination) refund credits its wallet; a
credit's reversal takes money out of its wallet. The refunds of a transaction never add up
to more than it: each locks the original's refunded total after the wallets."""

import uuid
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar
from uuid import UUID

from google.protobuf.message import Message

from shared.errors import ServiceError, not_found, permission_denied
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
from wallet_service.permissions import CREDIT_SCOPE, may_credit, may_use_wallet_of
from wallet_service.store import Conn
from wallet_service.store import ledger as ledger_store
from wallet_service.store import wallets as wallets_store


@dataclass
class Refund(Operation):
    transaction_id: UUID = field(default_factory=uuid.uuid4)
    amount: int = 0  # 0: all that is left
    reference: str = ""
    metadata: Metadata = field(default_factory=dict)

    response_type: ClassVar[type[Message]] = wallet_pb2.RefundTransactionResponse
    needs_preparing: ClassVar[bool] = True
    _original: Transaction | None = field(default=None, init=False)

    def request_fields(self) -> list[Any]:
        return with_metadata(
            ["RefundTransaction", self.transaction_id, self.amount, self.reference], self.metadata
        )

    async def prepare(self, conn: Conn) -> None:
        original = await ledger_store.get_transaction(conn, self.transaction_id)
        if original is None:
            raise _no_such_transaction(self.transaction_id)
        owners = await wallets_store.wallet_owners(conn, original.wallet_ids)
        self._check_may_refund(original, owners)
        self._original = original
        if original.type != TransactionType.REFUND:
            self.refunded_ids = [original.id]

    def _check_may_refund(self, original: Transaction, owners: dict[UUID, str]) -> None:
        """The receiving wallet's owner refunds a movement between two wallets; the payments
        service refunds a debit or reverses a credit; wallet:admin anything. A party that
        may not is told so; anyone else does not see the transaction at all."""
        principal = self.principal
        party = original.requested_by == principal.subject or any(
            may_use_wallet_of(principal, owner) for owner in owners.values()
        )
        payer = original.destination_wallet_id
        if original.type == TransactionType.REFUND:
            refusal: ServiceError | None = None  # refused as NOT_REFUNDABLE once claimed
        elif payer and original.source_wallet_id:
            refusal = (
                None
                if may_use_wallet_of(principal, owners[payer])
                else permission_denied(
                    "REFUND_NOT_PERMITTED",
                    "only the receiving wallet's owner (or wallet:admin) refunds this",
                )
            )
        else:
            refusal = (
                None
                if may_credit(principal)
                else permission_denied(
                    "MISSING_SCOPE",
                    f"this refund needs the {CREDIT_SCOPE} scope",
                    scope=CREDIT_SCOPE,
                )
            )
        if not party and (refusal is not None or original.type == TransactionType.REFUND):
            raise _no_such_transaction(original.id)
        if refusal is not None:
            raise refusal

    def wallets(self) -> dict[UUID, str | None]:
        assert self._original is not None, "prepared"
        return dict.fromkeys(self._original.wallet_ids)

    def apply(self, book: Book, request_hash: str) -> tuple[Message, UUID | None]:
        original = self._original
        assert original is not None
        if original.type == TransactionType.REFUND:
            raise Refusal("NOT_REFUNDABLE", "a refund cannot be refunded")
        remaining = original.amount - book.refunded[original.id]
        amount = self.amount or remaining
        if amount > remaining or remaining == 0:
            raise Refusal(
                "REFUND_EXCEEDS_REMAINING",
                "the amount is more than what is left to refund",
                remaining=remaining,
            )
        # Back the way it came: the original's destination pays, its source receives.
        payer, receiver = original.destination_wallet_id, original.source_wallet_id
        check_payment(
            book.wallets[payer] if payer else None,
            book.wallets[receiver] if receiver else None,
            amount,
        )
        refund = self.new_transaction(
            book,
            TransactionType.REFUND,
            amount,
            payer,
            receiver,
            self.reference,
            self.metadata,
            refund_of=original.id,
        )
        after = book.post(refund, request_hash)
        refunded = replace(original, refunded_amount=book.raise_refunded(original.id, amount))
        return self._answer(refund, refunded, after, book.wallets), refund.id

    def _answer(
        self,
        refund: Transaction,
        original: Transaction,
        after: dict[UUID, int],
        owners: dict[UUID, Any],
    ) -> Message:
        response = wallet_pb2.RefundTransactionResponse(
            refund=transaction_message(refund, self.principal),
            original=transaction_message(original, self.principal),
        )
        for wallet_id, field_name in (
            (refund.source_wallet_id, "source_balance_after"),
            (refund.destination_wallet_id, "destination_balance_after"),
        ):
            if wallet_id and may_use_wallet_of(self.principal, owners[wallet_id].user_id):
                setattr(response, field_name, after[wallet_id])
        return response

    async def replay_stored(self, conn: Conn) -> Message:
        made = await ledger_store.made_with_key(conn, self.principal.subject, self.key or "")
        if made is None or made.request_hash != self.fingerprint():
            raise key_reused()
        original = await ledger_store.get_transaction(conn, self.transaction_id)
        assert original is not None
        owners = await owners_of(conn, list(made.balances_after))
        return self._answer(made.transactions[0], original, made.balances_after, owners)


def _no_such_transaction(transaction_id: UUID) -> ServiceError:
    return not_found("TRANSACTION_NOT_FOUND", f"transaction {transaction_id} not found")
