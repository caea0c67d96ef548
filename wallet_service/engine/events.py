"""The events each change of a wallet writes (wallet.v1.WalletEvent, stored without its cursor).

They are stored with every detail; what a watcher may see of them (the key, reference and
metadata of someone else's request) is cut when they are delivered (`redacted`).
"""

from datetime import datetime
from uuid import UUID

from shared.gen.wallet.v1 import wallet_pb2
from shared.timestamps import to_timestamp
from wallet_service import messages
from wallet_service.models import Hold, HoldStatus, Transaction, Wallet
from wallet_service.store.ledger import Event, Posting

HOLD_EVENT_TYPES = {
    HoldStatus.HELD: wallet_pb2.EVENT_TYPE_HOLD_PLACED,
    HoldStatus.CAPTURED: wallet_pb2.EVENT_TYPE_HOLD_CAPTURED,
    HoldStatus.VOIDED: wallet_pb2.EVENT_TYPE_HOLD_VOIDED,
    HoldStatus.EXPIRED: wallet_pb2.EVENT_TYPE_HOLD_EXPIRED,
}


def _event(
    type_: int, wallet_id: UUID, owner_id: str, requested_by: str, at: datetime, **payload: object
) -> Event:
    message = wallet_pb2.WalletEvent(
        type=type_,  # type: ignore[arg-type]
        wallet_id=str(wallet_id),
        create_time=to_timestamp(at),
        **payload,  # type: ignore[arg-type]
    )
    return Event(
        wallet_id=wallet_id,
        owner_id=owner_id,
        requested_by=requested_by,
        type=wallet_pb2.EventType.Name(type_),
        payload=message.SerializeToString(),
        created_at=at,
    )


def created(wallet: Wallet) -> Event:
    return _event(
        wallet_pb2.EVENT_TYPE_WALLET_CREATED,
        wallet.id,
        wallet.user_id,
        wallet.user_id,
        wallet.created_at,
        wallet=messages.wallet_message(wallet),
    )


def posted(posting: Posting, transaction: Transaction, owner_id: str) -> Event:
    entry = wallet_pb2.LedgerEntry(
        wallet_id=str(posting.wallet_id),
        transaction=messages.full_transaction_message(transaction),
        balance_change=posting.amount,
        balance_after=posting.balance_after,
        sequence=posting.sequence,
    )
    return _event(
        wallet_pb2.EVENT_TYPE_TRANSACTION_POSTED,
        posting.wallet_id,
        owner_id,
        transaction.requested_by,
        posting.created_at,
        entry=entry,
    )


def hold_changed(hold: Hold, owner_id: str, at: datetime) -> Event:
    return _event(
        HOLD_EVENT_TYPES[hold.status],
        hold.wallet_id,
        owner_id,
        hold.requested_by,
        at,
        hold=messages.full_hold_message(hold, at),
    )


def status_changed(wallet: Wallet, changed_by: str, at: datetime) -> Event:
    return _event(
        wallet_pb2.EVENT_TYPE_WALLET_STATUS_CHANGED,
        wallet.id,
        wallet.user_id,
        changed_by,
        at,
        wallet=messages.wallet_message(wallet),
    )


def redacted(event: wallet_pb2.WalletEvent, sees_details: bool) -> wallet_pb2.WalletEvent:
    """The event as a watcher that may not see the request's details sees it."""
    payload = event.WhichOneof("payload")
    if sees_details or payload == "wallet":
        return event
    request = event.hold if payload == "hold" else event.entry.transaction
    for name in ("idempotency_key", "reference", "metadata"):
        request.ClearField(name)
    return event
