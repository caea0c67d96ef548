"""The money operations: what each one locks, checks and changes, and what it answers.

An operation is built from a validated request and its caller. The engine (runner.py) claims
its key, takes its locks, then calls `apply` with the book of locked rows; `apply` either
raises a `Refusal` (a final business outcome, recorded under the key) or changes the book
and returns the answer. Any other error leaves the key unused.
"""

import hashlib
import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

from google.protobuf.message import Message

from shared.errors import (
    ServiceError,
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
    permission_denied,
)
from shared.gen.wallet.v1 import wallet_pb2
from shared.tokens import Principal
from wallet_service.engine.book import Book, LockedWallet
from wallet_service.messages import hold_message, transaction_message
from wallet_service.models import Hold, HoldStatus, Transaction, TransactionType
from wallet_service.permissions import (
    CREDIT_SCOPE,
    can_place_holds_on_any_wallet,
    is_admin,
    may_credit,
    may_use_wallet_of,
    usable_owner,
)
from wallet_service.store import Conn
from wallet_service.store import holds as holds_store
from wallet_service.store import ledger as ledger_store
from wallet_service.store import wallets as wallets_store

INT64_MAX = 2**63 - 1
DEFAULT_HOLD_SECONDS = 7 * 24 * 3600
MAX_HOLD_SECONDS = 30 * 24 * 3600


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
    key: str

    response_type: ClassVar[type[Message]]
    needs_preparing: ClassVar[bool] = False
    hold_ids: list[UUID] = field(default_factory=list, init=False)
    refunded_ids: list[UUID] = field(default_factory=list, init=False)

    @abstractmethod
    def request_fields(self) -> list[Any]:
        """What the key is bound to: the same key with other fields is refused."""

    def fingerprint(self) -> str:
        canonical = json.dumps(
            [
                str(part) if isinstance(part, UUID | datetime) else part
                for part in self.request_fields()
            ]
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    @abstractmethod
    def wallets(self) -> dict[UUID, str | None]:
        """The wallets to lock, each with the owner it must have (None: any owner)."""

    async def prepare(self, conn: Conn) -> None:  # noqa: B027 (a hook most do not need)
        """Reads what the operation needs to know before it takes locks (which wallets)."""

    @abstractmethod
    def apply(self, book: Book, request_hash: str) -> tuple[Message, UUID | None]:
        """Checks and changes the book; returns the answer and the transaction it made."""

    @abstractmethod
    async def replay_stored(self, conn: Conn) -> Message:
        """The answer again, for a key whose record was cleaned up after it succeeded (or
        recorded before answers were kept): rebuilt from what the key made."""

    def _balance_for_caller(self, wallet: LockedWallet | None) -> int | None:
        if wallet is None or not may_use_wallet_of(self.principal, wallet.user_id):
            return None
        return wallet.balance

    def _new_transaction(
        self,
        book: Book,
        type_: TransactionType,
        amount: int,
        source: UUID | None,
        destination: UUID | None,
        reference: str,
        *,
        hold_id: UUID | None = None,
        refund_of: UUID | None = None,
    ) -> Transaction:
        currency = book.wallets[source or destination].currency  # type: ignore[index]
        return Transaction(
            id=uuid.uuid4(),
            type=type_,
            amount=amount,
            currency=currency,
            source_wallet_id=source,
            destination_wallet_id=destination,
            idempotency_key=self.key,
            reference=reference,
            requested_by=self.principal.subject,
            created_at=book.at,
            hold_id=hold_id,
            refund_of=refund_of,
        )


def _check_funds(wallet: LockedWallet, amount: int) -> None:
    if wallet.available < amount:
        raise Refusal(
            "INSUFFICIENT_FUNDS",
            "the available balance is lower than the amount",
            wallet_id=wallet.id,
        )


def _check_room(wallet: LockedWallet, amount: int) -> None:
    if wallet.balance > INT64_MAX - amount:
        raise Refusal(
            "BALANCE_OVERFLOW", "the balance would exceed the largest int64", wallet_id=wallet.id
        )


def _check_same_currency(source: LockedWallet, destination: LockedWallet) -> None:
    """Checked after funds, so a caller cannot learn the currency of someone else's wallet
    without the money to move; the message names no currency."""
    if source.currency != destination.currency:
        raise Refusal("CURRENCY_MISMATCH", "the destination wallet holds another currency")


# --- credit, debit, transfer -------------------------------------------------------------


@dataclass
class Movement(Operation):
    """Credit, Debit and Transfer: money into a wallet, out of one, or between two."""

    kind: ClassVar[TransactionType]
    amount: int = 0
    source: UUID | None = None
    destination: UUID | None = None
    reference: str = ""

    def request_fields(self) -> list[Any]:
        # The fields (and their order) of the hashes already in the ledger: keep them.
        return [
            self.kind.value,
            self.amount,
            str(self.source or ""),
            str(self.destination or ""),
            self.reference,
        ]

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
        if source:
            _check_funds(source, self.amount)
        if source and destination:
            _check_same_currency(source, destination)
        if destination:
            _check_room(destination, self.amount)
        transaction = self._new_transaction(
            book, self.kind, self.amount, self.source, self.destination, self.reference
        )
        after = book.post(transaction, request_hash)
        return self._answer(transaction, after, book.wallets), transaction.id

    def _answer(
        self, transaction: Transaction, after: dict[UUID, int], owners: dict[UUID, Any]
    ) -> Message:
        """The answer, with balances after only for wallets the caller may read: a crediting
        service is not told a user's balance, nor a payer the payee's."""
        message = transaction_message(transaction, self.principal)
        visible = {
            wallet_id: balance
            for wallet_id, balance in after.items()
            if may_use_wallet_of(self.principal, owners[wallet_id].user_id)
        }
        if self.kind == TransactionType.TRANSFER:
            assert self.source is not None and self.destination is not None
            return wallet_pb2.TransferResponse(
                transaction=message,
                source_balance_after=after[self.source],
                destination_balance_after=visible.get(self.destination),
            )
        wallet_id = self.source or self.destination
        assert wallet_id is not None
        return self.response_type(transaction=message, balance_after=visible.get(wallet_id, 0))

    async def replay_stored(self, conn: Conn) -> Message:
        stored = await ledger_store.transaction_made_with(conn, self.principal.subject, self.key)
        if stored is None:
            raise key_reused()
        transaction, stored_hash, after = stored
        if (stored_hash or _legacy_fingerprint(transaction)) != self.fingerprint():
            raise key_reused()
        owners = await wallets_store.wallet_owners(conn, list(after))
        return self._answer(transaction, after, {id_: _Owner(o) for id_, o in owners.items()})


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


@dataclass(frozen=True)
class _Owner:
    user_id: str


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


# --- holds ---------------------------------------------------------------------------------


@dataclass
class CreateHold(Operation):
    wallet_id: UUID = field(default_factory=uuid.uuid4)
    amount: int = 0
    destination: UUID | None = None
    expires_at: datetime | None = None  # None: the default, from when it is placed
    reference: str = ""

    response_type: ClassVar[type[Message]] = wallet_pb2.CreateHoldResponse

    def request_fields(self) -> list[Any]:
        return [
            "CreateHold",
            self.wallet_id,
            self.amount,
            self.destination,
            self.expires_at,
            self.reference,
        ]

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
        _check_funds(wallet, self.amount)
        if self.destination:
            _check_same_currency(wallet, book.wallets[self.destination])
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
            idempotency_key=self.key,
            reference=self.reference,
            capture_transaction_id=None,
            created_at=book.at,
            finished_at=None,
        )
        book.place_hold(hold, request_hash)
        response = wallet_pb2.CreateHoldResponse(hold=hold_message(hold, self.principal, book.at))
        if may_use_wallet_of(self.principal, wallet.user_id):
            response.available_balance_after = wallet.available
        return response, None

    async def replay_stored(self, conn: Conn) -> Message:
        stored = await holds_store.hold_created_with(conn, self.principal.subject, self.key)
        if stored is None or stored[1] != self.fingerprint():
            raise key_reused()
        hold = stored[0]
        return wallet_pb2.CreateHoldResponse(hold=hold_message(hold, self.principal, _now()))


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

    response_type: ClassVar[type[Message]] = wallet_pb2.CaptureHoldResponse

    def request_fields(self) -> list[Any]:
        return ["CaptureHold", self.hold_id, self.amount, self.reference]

    def apply(self, book: Book, request_hash: str) -> tuple[Message, UUID | None]:
        hold = self._live_hold(book)
        amount = self.amount or hold.amount
        if amount > hold.amount:
            raise Refusal(
                "CAPTURE_EXCEEDS_HOLD", "the amount is more than the hold's", hold_id=hold.id
            )
        if hold.destination_wallet_id:
            _check_room(book.wallets[hold.destination_wallet_id], amount)
        # The hold reserved the money: its release makes room for the capture.
        source = book.wallets[hold.wallet_id]
        assert source.available + hold.amount >= amount, "a live hold is covered"
        transaction = self._new_transaction(
            book,
            TransactionType.CAPTURE,
            amount,
            hold.wallet_id,
            hold.destination_wallet_id,
            self.reference,
            hold_id=hold.id,
        )
        captured = replace(
            hold,
            status=HoldStatus.CAPTURED,
            captured_amount=amount,
            capture_transaction_id=transaction.id,
            finished_at=book.at,
        )
        book.finish_hold(captured, self.principal.subject, self.key)
        after = book.post(transaction, request_hash)
        return self._answer(captured, transaction, after, book.wallets, book.at), transaction.id

    def _answer(
        self,
        hold: Hold,
        transaction: Transaction,
        after: dict[UUID, int],
        owners: dict[UUID, Any],
        now: datetime,
    ) -> Message:
        response = wallet_pb2.CaptureHoldResponse(
            hold=hold_message(hold, self.principal, now),
            transaction=transaction_message(transaction, self.principal),
        )
        if may_use_wallet_of(self.principal, owners[hold.wallet_id].user_id):
            response.source_balance_after = after[hold.wallet_id]
        destination = hold.destination_wallet_id
        if destination and may_use_wallet_of(self.principal, owners[destination].user_id):
            response.destination_balance_after = after[destination]
        return response

    async def replay_stored(self, conn: Conn) -> Message:
        stored = await ledger_store.transaction_made_with(conn, self.principal.subject, self.key)
        if stored is None or stored[1] != self.fingerprint():
            raise key_reused()
        transaction, _, after = stored
        hold = await holds_store.get_hold(conn, self.hold_id)
        assert hold is not None
        owners = await wallets_store.wallet_owners(conn, list(after))
        return self._answer(
            hold,
            transaction,
            after,
            {id_: _Owner(o) for id_, o in owners.items()},
            transaction.created_at,
        )


@dataclass
class VoidHold(_EndHold):
    response_type: ClassVar[type[Message]] = wallet_pb2.VoidHoldResponse

    def request_fields(self) -> list[Any]:
        return ["VoidHold", self.hold_id]

    def apply(self, book: Book, request_hash: str) -> tuple[Message, UUID | None]:
        hold = self._live_hold(book)
        voided = replace(hold, status=HoldStatus.VOIDED, finished_at=book.at)
        book.finish_hold(voided, self.principal.subject, self.key)
        wallet = book.wallets[hold.wallet_id]
        response = wallet_pb2.VoidHoldResponse(hold=hold_message(voided, self.principal, book.at))
        if may_use_wallet_of(self.principal, wallet.user_id):
            response.available_balance_after = wallet.available
        return response, None

    async def replay_stored(self, conn: Conn) -> Message:
        hold = await holds_store.hold_finished_with(conn, self.principal.subject, self.key)
        if hold is None or hold.id != self.hold_id or hold.status != HoldStatus.VOIDED:
            raise key_reused()
        return wallet_pb2.VoidHoldResponse(hold=hold_message(hold, self.principal, _now()))


# --- refunds -------------------------------------------------------------------------------


@dataclass
class Refund(Operation):
    """Money back the way it came: a transfer's (or capture's) destination pays its source
    back; a debit's (or a capture's without destination) refund credits its wallet; a
    credit's reversal takes money out of its wallet."""

    transaction_id: UUID = field(default_factory=uuid.uuid4)
    amount: int = 0  # 0: all that is left
    reference: str = ""

    response_type: ClassVar[type[Message]] = wallet_pb2.RefundTransactionResponse
    needs_preparing: ClassVar[bool] = True
    _original: Transaction | None = field(default=None, init=False)

    def request_fields(self) -> list[Any]:
        return ["RefundTransaction", self.transaction_id, self.amount, self.reference]

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
        principal = self.principal
        party = original.requested_by == principal.subject or any(
            may_use_wallet_of(principal, owner) for owner in owners.values()
        )
        if original.type == TransactionType.REFUND:
            if not party:
                raise _no_such_transaction(original.id)
            return  # refused as NOT_REFUNDABLE once the key is claimed
        payer, _ = _refund_route(original)
        if payer is not None and original.source_wallet_id is not None:
            # Between two wallets: the one that received the money pays it back.
            if may_use_wallet_of(principal, owners[payer]):
                return
            if party:
                raise permission_denied(
                    "REFUND_NOT_PERMITTED",
                    "only the receiving wallet's owner (or wallet:admin) refunds this",
                )
            raise _no_such_transaction(original.id)
        if may_credit(principal):
            return
        if party:
            raise permission_denied(
                "MISSING_SCOPE", f"this refund needs the {CREDIT_SCOPE} scope", scope=CREDIT_SCOPE
            )
        raise _no_such_transaction(original.id)

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
        payer_id, receiver_id = _refund_route(original)
        if payer_id:
            _check_funds(book.wallets[payer_id], amount)
        if receiver_id:
            _check_room(book.wallets[receiver_id], amount)
        refund = self._new_transaction(
            book,
            TransactionType.REFUND,
            amount,
            payer_id,
            receiver_id,
            self.reference,
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
        stored = await ledger_store.transaction_made_with(conn, self.principal.subject, self.key)
        if stored is None or stored[1] != self.fingerprint():
            raise key_reused()
        refund, _, after = stored
        original = await ledger_store.get_transaction(conn, self.transaction_id)
        assert original is not None
        owners = await wallets_store.wallet_owners(conn, list(after))
        return self._answer(refund, original, after, {id_: _Owner(o) for id_, o in owners.items()})


def _now() -> datetime:
    return datetime.now(UTC)


def _refund_route(original: Transaction) -> tuple[UUID | None, UUID | None]:
    """(the wallet that pays the refund, the wallet that receives it): the reverse."""
    return original.destination_wallet_id, original.source_wallet_id


def _no_such_transaction(transaction_id: UUID) -> ServiceError:
    return not_found("TRANSACTION_NOT_FOUND", f"transaction {transaction_id} not found")
