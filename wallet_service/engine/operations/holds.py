"""Holds: CreateHold reserves part of a wallet's available balance; CaptureHold posts all or
part of it (the rest is released); VoidHold releases it. Capture, void and expiry are final,
and exactly one of them wins: each takes the hold's row lock after its wallets' locks."""

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

from google.protobuf.message import Message

from shared.errors import invalid_argument, not_found
from shared.gen.wallet.v1 import wallet_pb2
from wallet_service.engine.book import Book
from wallet_service.engine.operations.base import (
    Operation,
    Refusal,
    check_payment,
    key_reused,
    now,
    owners_of,
    with_metadata,
)
from wallet_service.messages import hold_message, transaction_message
from wallet_service.models import Hold, HoldStatus, Metadata, Transaction, TransactionType
from wallet_service.permissions import can_place_holds_on_any_wallet, is_admin, may_use_wallet_of
from wallet_service.store import Conn
from wallet_service.store import holds as holds_store
from wallet_service.store import ledger as ledger_store

DEFAULT_HOLD_SECONDS = 7 * 24 * 3600
MAX_HOLD_SECONDS = 30 * 24 * 3600


@dataclass
class CreateHold(Operation):
    wallet_id: UUID = field(default_factory=uuid.uuid4)
    amount: int = 0
    destination: UUID | None = None
    expires_at: datetime | None = None  # None: the default, from when it is placed
    reference: str = ""
    metadata: Metadata = field(default_factory=dict)

    response_type: ClassVar[type[Message]] = wallet_pb2.CreateHoldResponse

    def request_fields(self) -> list[Any]:
        fields = [
            "CreateHold",
            self.wallet_id,
            self.amount,
            self.destination,
            self.expires_at,
            self.reference,
        ]
        return with_metadata(fields, self.metadata)

    def wallets(self) -> dict[UUID, str | None]:
        owner = None if can_place_holds_on_any_wallet(self.principal) else self.principal.subject
        wanted: dict[UUID, str | None] = {self.wallet_id: owner}
        if self.destination:
            wanted[self.destination] = None
        return wanted

    def apply(self, book: Book, request_hash: str) -> tuple[Message, UUID | None]:
        expires_at = self.expires_at or book.at + timedelta(seconds=DEFAULT_HOLD_SECONDS)
        if not book.at < expires_at <= book.at + timedelta(seconds=MAX_HOLD_SECONDS):
            raise invalid_argument(
                "INVALID_EXPIRY", "expire_time must be in the future, at most 30 days ahead"
            )
        wallet = book.wallets[self.wallet_id]
        destination = book.wallets[self.destination] if self.destination else None
        # A hold is money on its way out: checked like a payment (to the destination, if any).
        check_payment(wallet, destination, self.amount)
        hold = Hold(
            id=uuid.uuid4(),
            wallet_id=self.wallet_id,
            destination_wallet_id=self.destination,
            amount=self.amount,
            currency=wallet.currency,
            status=HoldStatus.HELD,
            captured_amount=0,
            expires_at=expires_at,
            requested_by=self.principal.subject,
            idempotency_key=self.key or "",
            reference=self.reference,
            capture_transaction_id=None,
            created_at=book.at,
            finished_at=None,
            metadata=self.metadata,
        )
        book.place_hold(hold, request_hash)
        response = wallet_pb2.CreateHoldResponse(hold=hold_message(hold, self.principal, book.at))
        if may_use_wallet_of(self.principal, wallet.user_id):
            response.available_balance_after = wallet.available
        return response, None

    async def replay_stored(self, conn: Conn) -> Message:
        stored = await holds_store.hold_created_with(conn, self.principal.subject, self.key or "")
        if stored is None or stored[1] != self.fingerprint():
            raise key_reused()
        return wallet_pb2.CreateHoldResponse(hold=hold_message(stored[0], self.principal, now()))


@dataclass
class _EndHold(Operation):
    """CaptureHold and VoidHold: the caller that placed the hold, or wallet:admin."""

    hold_id: UUID = field(default_factory=uuid.uuid4)
    needs_preparing: ClassVar[bool] = True
    _hold: Hold | None = field(default=None, init=False)

    async def prepare(self, conn: Conn) -> None:
        hold = await holds_store.get_hold(conn, self.hold_id)
        if hold is None or not (
            hold.requested_by == self.principal.subject or is_admin(self.principal)
        ):
            raise not_found("HOLD_NOT_FOUND", f"hold {self.hold_id} not found")
        self._hold = hold
        self.hold_ids = [hold.id]

    def wallets(self) -> dict[UUID, str | None]:
        assert self._hold is not None, "prepared"
        return dict.fromkeys(self._hold.wallet_ids)

    def _live_hold(self, book: Book) -> Hold:
        hold = book.holds[self.hold_id]
        status = hold.status_at(book.at)
        if status == HoldStatus.CAPTURED:
            raise Refusal("HOLD_ALREADY_CAPTURED", "the hold was captured", hold_id=hold.id)
        if status == HoldStatus.VOIDED:
            raise Refusal("HOLD_VOIDED", "the hold was voided", hold_id=hold.id)
        if status == HoldStatus.EXPIRED:
            raise Refusal("HOLD_EXPIRED", "the hold expired", hold_id=hold.id)
        return hold


@dataclass
class CaptureHold(_EndHold):
    amount: int = 0  # 0: all of it
    reference: str = ""
    metadata: Metadata = field(default_factory=dict)

    response_type: ClassVar[type[Message]] = wallet_pb2.CaptureHoldResponse

    def request_fields(self) -> list[Any]:
        return with_metadata(
            ["CaptureHold", self.hold_id, self.amount, self.reference], self.metadata
        )

    def apply(self, book: Book, request_hash: str) -> tuple[Message, UUID | None]:
        hold = self._live_hold(book)
        amount = self.amount or hold.amount
        if amount > hold.amount:
            raise Refusal(
                "CAPTURE_EXCEEDS_HOLD", "the amount is more than the hold's", hold_id=hold.id
            )
        source = book.wallets[hold.wallet_id]
        destination = (
            book.wallets[hold.destination_wallet_id] if hold.destination_wallet_id else None
        )
        # The hold reserved the money: its release makes room for the capture.
        check_payment(source, destination, amount, reserved=hold.amount)
        transaction = self.new_transaction(
            book,
            TransactionType.CAPTURE,
            amount,
            hold.wallet_id,
            hold.destination_wallet_id,
            self.reference,
            self.metadata,
            hold_id=hold.id,
        )
        captured = replace(
            hold,
            status=HoldStatus.CAPTURED,
            captured_amount=amount,
            capture_transaction_id=transaction.id,
            finished_at=book.at,
        )
        book.finish_hold(captured, self.principal.subject, self.key or "")
        after = book.post(transaction, request_hash)
        answer = self._answer(captured, transaction, after, book.wallets, book.at)
        return answer, transaction.id

    def _answer(
        self,
        hold: Hold,
        transaction: Transaction,
        after: dict[UUID, int],
        owners: dict[UUID, Any],
        at: datetime,
    ) -> Message:
        response = wallet_pb2.CaptureHoldResponse(
            hold=hold_message(hold, self.principal, at),
            transaction=transaction_message(transaction, self.principal),
        )
        if may_use_wallet_of(self.principal, owners[hold.wallet_id].user_id):
            response.source_balance_after = after[hold.wallet_id]
        destination = hold.destination_wallet_id
        if destination and may_use_wallet_of(self.principal, owners[destination].user_id):
            response.destination_balance_after = after[destination]
        return response

    async def replay_stored(self, conn: Conn) -> Message:
        made = await ledger_store.made_with_key(conn, self.principal.subject, self.key or "")
        if made is None or made.request_hash != self.fingerprint():
            raise key_reused()
        hold = await holds_store.get_hold(conn, self.hold_id)
        assert hold is not None
        owners = await owners_of(conn, list(made.balances_after))
        transaction = made.transactions[0]
        return self._answer(hold, transaction, made.balances_after, owners, transaction.created_at)


@dataclass
class VoidHold(_EndHold):
    response_type: ClassVar[type[Message]] = wallet_pb2.VoidHoldResponse

    def request_fields(self) -> list[Any]:
        return ["VoidHold", self.hold_id]

    def apply(self, book: Book, request_hash: str) -> tuple[Message, UUID | None]:
        hold = self._live_hold(book)
        # Releasing money moves none: allowed whatever the wallet's status.
        voided = replace(hold, status=HoldStatus.VOIDED, finished_at=book.at)
        book.finish_hold(voided, self.principal.subject, self.key or "")
        wallet = book.wallets[hold.wallet_id]
        response = wallet_pb2.VoidHoldResponse(hold=hold_message(voided, self.principal, book.at))
        if may_use_wallet_of(self.principal, wallet.user_id):
            response.available_balance_after = wallet.available
        return response, None

    async def replay_stored(self, conn: Conn) -> Message:
        hold = await holds_store.hold_finished_with(conn, self.principal.subject, self.key or "")
        if hold is None or hold.id != self.hold_id or hold.status != HoldStatus.VOIDED:
            raise key_reused()
        return wallet_pb2.VoidHoldResponse(hold=hold_message(hold, self.principal, now()))
