"""Domain values -> wallet.v1 protobuf messages."""

from shared.gen.wallet.v1 import wallet_pb2
from shared.timestamps import to_timestamp
from shared.tokens import Principal
from wallet_service.currencies import currency_exponent
from wallet_service.models import LedgerEntry, Transaction, TransactionType, Wallet
from wallet_service.permissions import sees_request_details

TYPE_TO_PROTO = {
    TransactionType.CREDIT: wallet_pb2.TRANSACTION_TYPE_CREDIT,
    TransactionType.DEBIT: wallet_pb2.TRANSACTION_TYPE_DEBIT,
    TransactionType.TRANSFER: wallet_pb2.TRANSACTION_TYPE_TRANSFER,
}
PROTO_TO_TYPE = {proto: type_ for type_, proto in TYPE_TO_PROTO.items()}


def wallet_message(wallet: Wallet) -> wallet_pb2.Wallet:
    return wallet_pb2.Wallet(
        id=str(wallet.id),
        user_id=wallet.user_id,
        currency=wallet.currency,
        currency_exponent=currency_exponent(wallet.currency),
        balance=wallet.balance,
        create_time=to_timestamp(wallet.created_at),
        update_time=to_timestamp(wallet.updated_at),
    )


def transaction_message(transaction: Transaction, viewer: Principal) -> wallet_pb2.Transaction:
    """The transaction as `viewer` may see it: its idempotency key and reference only for
    the caller that requested it (or wallet:admin), not for the other side of a movement."""
    message = wallet_pb2.Transaction(
        id=str(transaction.id),
        type=TYPE_TO_PROTO[transaction.type],
        amount=transaction.amount,
        currency=transaction.currency,
        source_wallet_id=str(transaction.source_wallet_id or ""),
        destination_wallet_id=str(transaction.destination_wallet_id or ""),
        create_time=to_timestamp(transaction.created_at),
    )
    if sees_request_details(viewer, transaction.requested_by):
        message.idempotency_key = transaction.idempotency_key
        message.reference = transaction.reference
    return message


def ledger_entry_message(entry: LedgerEntry, viewer: Principal) -> wallet_pb2.LedgerEntry:
    return wallet_pb2.LedgerEntry(
        wallet_id=str(entry.wallet_id),
        transaction=transaction_message(entry.transaction, viewer),
        balance_change=entry.amount,
        balance_after=entry.balance_after,
        sequence=entry.sequence,
    )
