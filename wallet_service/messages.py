"""Domain values -> wallet.v1 protobuf messages, as a given caller may see them."""

from datetime import datetime

from shared.gen.wallet.v1 import wallet_pb2
from shared.timestamps import to_timestamp
from shared.tokens import Principal
from wallet_service.currencies import currency_exponent
from wallet_service.models import (
    Hold,
    HoldStatus,
    LedgerEntry,
    Transaction,
    TransactionType,
    Wallet,
    WalletStatus,
)
from wallet_service.permissions import sees_request_details

TYPE_TO_PROTO = {
    TransactionType.CREDIT: wallet_pb2.TRANSACTION_TYPE_CREDIT,
    TransactionType.DEBIT: wallet_pb2.TRANSACTION_TYPE_DEBIT,
    TransactionType.TRANSFER: wallet_pb2.TRANSACTION_TYPE_TRANSFER,
    TransactionType.CAPTURE: wallet_pb2.TRANSACTION_TYPE_CAPTURE,
    TransactionType.REFUND: wallet_pb2.TRANSACTION_TYPE_REFUND,
}
PROTO_TO_TYPE = {proto: type_ for type_, proto in TYPE_TO_PROTO.items()}
HOLD_STATUS_TO_PROTO = {
    HoldStatus.HELD: wallet_pb2.HOLD_STATUS_HELD,
    HoldStatus.CAPTURED: wallet_pb2.HOLD_STATUS_CAPTURED,
    HoldStatus.VOIDED: wallet_pb2.HOLD_STATUS_VOIDED,
    HoldStatus.EXPIRED: wallet_pb2.HOLD_STATUS_EXPIRED,
}
PROTO_TO_HOLD_STATUS = {proto: status for status, proto in HOLD_STATUS_TO_PROTO.items()}
WALLET_STATUS_TO_PROTO = {
    WalletStatus.ACTIVE: wallet_pb2.WALLET_STATUS_ACTIVE,
    WalletStatus.DEBITS_FROZEN: wallet_pb2.WALLET_STATUS_DEBITS_FROZEN,
    WalletStatus.FROZEN: wallet_pb2.WALLET_STATUS_FROZEN,
    WalletStatus.CLOSED: wallet_pb2.WALLET_STATUS_CLOSED,
}
PROTO_TO_WALLET_STATUS = {proto: status for status, proto in WALLET_STATUS_TO_PROTO.items()}


def wallet_message(wallet: Wallet) -> wallet_pb2.Wallet:
    """A wallet, for its owner (or wallet:admin): only they may read one."""
    message = wallet_pb2.Wallet(
        id=str(wallet.id),
        user_id=wallet.user_id,
        currency=wallet.currency,
        currency_exponent=currency_exponent(wallet.currency),
        balance=wallet.balance,
        available_balance=wallet.available_balance,
        create_time=to_timestamp(wallet.created_at),
        update_time=to_timestamp(wallet.updated_at),
        status=WALLET_STATUS_TO_PROTO[wallet.status],
        status_reason=wallet.status_reason,
        metadata=wallet.metadata,
    )
    if wallet.status_changed_at is not None:
        message.status_change_time.CopyFrom(to_timestamp(wallet.status_changed_at))
    return message


def transaction_message(transaction: Transaction, viewer: Principal) -> wallet_pb2.Transaction:
    """The transaction as `viewer` may see it: its idempotency key, reference and metadata
    only for the caller that requested it (or wallet:admin), not for the other side."""
    return _transaction(transaction, sees_request_details(viewer, transaction.requested_by))


def full_transaction_message(transaction: Transaction) -> wallet_pb2.Transaction:
    return _transaction(transaction, with_details=True)


def _transaction(transaction: Transaction, with_details: bool) -> wallet_pb2.Transaction:
    message = wallet_pb2.Transaction(
        id=str(transaction.id),
        type=TYPE_TO_PROTO[transaction.type],
        amount=transaction.amount,
        currency=transaction.currency,
        source_wallet_id=_id(transaction.source_wallet_id),
        destination_wallet_id=_id(transaction.destination_wallet_id),
        create_time=to_timestamp(transaction.created_at),
        hold_id=_id(transaction.hold_id),
        refunded_transaction_id=_id(transaction.refund_of),
        refunded_amount=transaction.refunded_amount,
        batch_index=transaction.batch_index,
    )
    if with_details:
        message.idempotency_key = transaction.idempotency_key
        message.reference = transaction.reference
        message.metadata.update(transaction.metadata)
    return message


def ledger_entry_message(entry: LedgerEntry, viewer: Principal) -> wallet_pb2.LedgerEntry:
    return wallet_pb2.LedgerEntry(
        wallet_id=str(entry.wallet_id),
        transaction=transaction_message(entry.transaction, viewer),
        balance_change=entry.amount,
        balance_after=entry.balance_after,
        sequence=entry.sequence,
    )


def hold_message(hold: Hold, viewer: Principal, now: datetime) -> wallet_pb2.Hold:
    """The hold as of `now` (EXPIRED from its expiry on), as `viewer` may see it."""
    return _hold(hold, now, sees_request_details(viewer, hold.requested_by))


def full_hold_message(hold: Hold, now: datetime) -> wallet_pb2.Hold:
    return _hold(hold, now, with_details=True)


def _hold(hold: Hold, now: datetime, with_details: bool) -> wallet_pb2.Hold:
    message = wallet_pb2.Hold(
        id=str(hold.id),
        wallet_id=str(hold.wallet_id),
        destination_wallet_id=_id(hold.destination_wallet_id),
        amount=hold.amount,
        currency=hold.currency,
        status=HOLD_STATUS_TO_PROTO[hold.status_at(now)],
        captured_amount=hold.captured_amount,
        expire_time=to_timestamp(hold.expires_at),
        create_time=to_timestamp(hold.created_at),
        capture_transaction_id=_id(hold.capture_transaction_id),
    )
    finished_at = hold.finished_at_or_expiry(now)
    if finished_at is not None:
        message.finish_time.CopyFrom(to_timestamp(finished_at))
    if with_details:
        message.idempotency_key = hold.idempotency_key
        message.reference = hold.reference
        message.metadata.update(hold.metadata)
    return message


def _id(value: object | None) -> str:
    return "" if value is None else str(value)
