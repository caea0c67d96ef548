"""The WalletService RPC handlers: validate, authorise, then either hand a money operation to
the engine (engine/) or read through the store (store/), and answer. They speak in domain
terms: SQL lives in the store, locks and retries in the engine."""

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg_pool

from shared.errors import (
    ServiceError,
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
    permission_denied,
)
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from shared.timestamps import to_timestamp
from shared.tokens import Principal
from wallet_service import page_tokens, validation
from wallet_service.authentication import current_principal
from wallet_service.currencies import normalise_currency
from wallet_service.engine import events
from wallet_service.engine.operations import batches, holds, movements, refunds, status
from wallet_service.engine.runner import Engine
from wallet_service.event_feed import EventFeed
from wallet_service.messages import (
    hold_message,
    ledger_entry_message,
    transaction_message,
    wallet_message,
)
from wallet_service.metrics import EVENT_STREAMS
from wallet_service.models import Hold, Transaction, TransactionType, Wallet
from wallet_service.permissions import (
    can_use,
    is_admin,
    may_credit,
    require_admin_scope,
    require_credit_scope,
    watches_every_wallet,
)
from wallet_service.store import Conn
from wallet_service.store import events as events_store
from wallet_service.store import holds as holds_store
from wallet_service.store import ledger as ledger_store
from wallet_service.store import wallets as wallets_store

EVENT_PAGE_SIZE = 100
# How soon a watcher looks again when committed events wait for an older transaction.
HELD_BACK_RECHECK_SECONDS = 0.05


@dataclass(frozen=True)
class WatchSettings:
    heartbeat_seconds: float = 15.0
    retention_days: float = 7.0


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        engine: Engine,
        feed: EventFeed,
        watching: WatchSettings,
    ) -> None:
        self._pool = pool
        self._engine = engine
        self._feed = feed
        self._watching = watching

    # --- wallets ---------------------------------------------------------------------------

    async def CreateWallet(
        self, request: wallet_pb2.CreateWalletRequest, context: Any
    ) -> wallet_pb2.CreateWalletResponse:
        principal = current_principal()
        currency, _ = normalise_currency(request.currency)
        metadata = validation.metadata(request.metadata)
        async with self._pool.connection() as conn, conn.transaction():
            wallet = await wallets_store.insert_wallet(conn, principal.subject, currency, metadata)
            if wallet is not None:
                await events_store.insert(conn, events.created(wallet))
        if wallet is None:
            raise already_exists(
                "WALLET_EXISTS", f"you already have a {currency} wallet", currency=currency
            )
        self._feed.events_committed()
        return wallet_pb2.CreateWalletResponse(wallet=wallet_message(wallet))

    async def GetWallet(
        self, request: wallet_pb2.GetWalletRequest, context: Any
    ) -> wallet_pb2.GetWalletResponse:
        wallet_id = validation.wallet_id(request.wallet_id)
        async with self._pool.connection() as conn:
            wallet = await _usable_wallet(conn, current_principal(), wallet_id)
        return wallet_pb2.GetWalletResponse(wallet=wallet_message(wallet))

    async def ListWallets(
        self, request: wallet_pb2.ListWalletsRequest, context: Any
    ) -> wallet_pb2.ListWalletsResponse:
        principal = current_principal()
        size = page_tokens.page_size(request.page_size)
        cursor = page_tokens.decode(request.page_token, ["wallets", principal.subject])
        after = page_tokens.time_and_id_cursor(cursor) if cursor else None
        async with self._pool.connection() as conn:
            wallets = await wallets_store.list_wallets(conn, principal.subject, after, size + 1)
        next_token = ""
        if len(wallets) > size:
            wallets = wallets[:size]
            last = wallets[-1]
            next_token = page_tokens.encode(
                [last.created_at.isoformat(), str(last.id)], ["wallets", principal.subject]
            )
        return wallet_pb2.ListWalletsResponse(
            wallets=[wallet_message(wallet) for wallet in wallets], next_page_token=next_token
        )

    # --- movements -------------------------------------------------------------------------

    async def Credit(self, request: wallet_pb2.CreditRequest, context: Any) -> Any:
        principal = current_principal()
        require_credit_scope(principal)
        operation = movements.Credit(
            principal,
            validation.idempotency_key(request.idempotency_key),
            amount=validation.amount(request.amount),
            destination=validation.wallet_id(request.wallet_id),
            reference=validation.reference(request.reference),
            metadata=validation.metadata(request.metadata),
        )
        return await self._engine.execute(operation, context)

    async def Debit(self, request: wallet_pb2.DebitRequest, context: Any) -> Any:
        operation = movements.Debit(
            current_principal(),
            validation.idempotency_key(request.idempotency_key),
            amount=validation.amount(request.amount),
            source=validation.wallet_id(request.wallet_id),
            reference=validation.reference(request.reference),
            metadata=validation.metadata(request.metadata),
        )
        return await self._engine.execute(operation, context)

    async def Transfer(self, request: wallet_pb2.TransferRequest, context: Any) -> Any:
        source = validation.wallet_id(request.source_wallet_id, "source_wallet_id")
        destination = validation.wallet_id(request.destination_wallet_id, "destination_wallet_id")
        if source == destination:
            raise invalid_argument(
                "SAME_WALLET", "source and destination must be different wallets"
            )
        operation = movements.Transfer(
            current_principal(),
            validation.idempotency_key(request.idempotency_key),
            amount=validation.amount(request.amount),
            source=source,
            destination=destination,
            reference=validation.reference(request.reference),
            metadata=validation.metadata(request.metadata),
        )
        return await self._engine.execute(operation, context)

    async def RefundTransaction(
        self, request: wallet_pb2.RefundTransactionRequest, context: Any
    ) -> Any:
        operation = refunds.Refund(
            current_principal(),
            validation.idempotency_key(request.idempotency_key),
            transaction_id=validation.transaction_id(request.transaction_id),
            amount=validation.amount_or_all(request.amount),
            reference=validation.reference(request.reference),
            metadata=validation.metadata(request.metadata),
        )
        return await self._engine.execute(operation, context)

    async def ExecuteBatch(self, request: wallet_pb2.ExecuteBatchRequest, context: Any) -> Any:
        principal = current_principal()
        key = validation.idempotency_key(request.idempotency_key)
        if not 1 <= len(request.movements) <= batches.MAX_MOVEMENTS:
            raise invalid_argument(
                "INVALID_BATCH", f"a batch has 1 to {batches.MAX_MOVEMENTS} movements"
            )
        legs = [
            _batch_leg(principal, index, movement)
            for index, movement in enumerate(request.movements)
        ]
        return await self._engine.execute(batches.Batch(principal, key, legs=legs), context)

    # --- holds -----------------------------------------------------------------------------

    async def CreateHold(self, request: wallet_pb2.CreateHoldRequest, context: Any) -> Any:
        wallet_id = validation.wallet_id(request.wallet_id)
        destination = validation.optional_wallet_id(
            request.destination_wallet_id, "destination_wallet_id"
        )
        if destination == wallet_id:
            raise invalid_argument(
                "SAME_WALLET", "the destination must be another wallet than the held one"
            )
        operation = holds.CreateHold(
            current_principal(),
            validation.idempotency_key(request.idempotency_key),
            wallet_id=wallet_id,
            amount=validation.amount(request.amount),
            destination=destination,
            expires_at=validation.expiry(request.expire_time, request.HasField("expire_time")),
            reference=validation.reference(request.reference),
            metadata=validation.metadata(request.metadata),
        )
        return await self._engine.execute(operation, context)

    async def CaptureHold(self, request: wallet_pb2.CaptureHoldRequest, context: Any) -> Any:
        operation = holds.CaptureHold(
            current_principal(),
            validation.idempotency_key(request.idempotency_key),
            hold_id=validation.hold_id(request.hold_id),
            amount=validation.amount_or_all(request.amount),
            reference=validation.reference(request.reference),
            metadata=validation.metadata(request.metadata),
        )
        return await self._engine.execute(operation, context)

    async def VoidHold(self, request: wallet_pb2.VoidHoldRequest, context: Any) -> Any:
        operation = holds.VoidHold(
            current_principal(),
            validation.idempotency_key(request.idempotency_key),
            hold_id=validation.hold_id(request.hold_id),
        )
        return await self._engine.execute(operation, context)

    async def GetHold(
        self, request: wallet_pb2.GetHoldRequest, context: Any
    ) -> wallet_pb2.GetHoldResponse:
        principal = current_principal()
        hold_id = validation.hold_id(request.hold_id)
        async with self._pool.connection() as conn:
            hold = await holds_store.get_hold(conn, hold_id)
            if hold is None or not await _may_see_hold(conn, principal, hold):
                raise not_found("HOLD_NOT_FOUND", f"hold {hold_id} not found")
        return wallet_pb2.GetHoldResponse(hold=hold_message(hold, principal, _now()))

    async def ListHolds(
        self, request: wallet_pb2.ListHoldsRequest, context: Any
    ) -> wallet_pb2.ListHoldsResponse:
        principal = current_principal()
        wallet_id = validation.wallet_id(request.wallet_id)
        status = validation.hold_status_filter(request.status)
        size = page_tokens.page_size(request.page_size)
        filters = ["holds", str(wallet_id), request.status]
        cursor = page_tokens.decode(request.page_token, filters)
        async with self._pool.connection() as conn:
            await _usable_wallet(conn, principal, wallet_id)
            holds = await holds_store.list_holds(
                conn,
                wallet_id,
                status=status,
                before=page_tokens.time_and_id_cursor(cursor) if cursor else None,
                limit=size + 1,
            )
        next_token = ""
        if len(holds) > size:
            holds = holds[:size]
            last = holds[-1]
            next_token = page_tokens.encode([last.created_at.isoformat(), str(last.id)], filters)
        now = _now()
        return wallet_pb2.ListHoldsResponse(
            holds=[hold_message(hold, principal, now) for hold in holds],
            next_page_token=next_token,
        )

    # --- history ---------------------------------------------------------------------------

    async def GetTransaction(
        self, request: wallet_pb2.GetTransactionRequest, context: Any
    ) -> wallet_pb2.GetTransactionResponse:
        principal = current_principal()
        transaction_id = validation.transaction_id(request.transaction_id)
        async with self._pool.connection() as conn:
            transaction = await ledger_store.get_transaction(conn, transaction_id)
            if transaction is None or not await _may_see_transaction(conn, principal, transaction):
                raise not_found("TRANSACTION_NOT_FOUND", f"transaction {transaction_id} not found")
        return wallet_pb2.GetTransactionResponse(
            transaction=transaction_message(transaction, principal)
        )

    async def ListTransactions(
        self, request: wallet_pb2.ListTransactionsRequest, context: Any
    ) -> wallet_pb2.ListTransactionsResponse:
        principal = current_principal()
        wallet_id = validation.wallet_id(request.wallet_id)
        size = page_tokens.page_size(request.page_size)
        type_filter = validation.transaction_type_filter(request.type)
        start_time, end_time = validation.time_range(
            request.start_time,
            request.end_time,
            request.HasField("start_time"),
            request.HasField("end_time"),
        )
        filters = [
            str(wallet_id),
            request.type,
            start_time.isoformat() if start_time else None,
            end_time.isoformat() if end_time else None,
        ]
        metadata = validation.metadata_filter(request.metadata_key, request.metadata_value)
        filters.append(list(metadata) if metadata else None)
        cursor = page_tokens.decode(request.page_token, filters)
        async with self._pool.connection() as conn:
            await _usable_wallet(conn, principal, wallet_id)
            entries = await ledger_store.list_ledger_entries(
                conn,
                wallet_id,
                before_sequence=page_tokens.sequence_cursor(cursor) if cursor else None,
                type_=type_filter,
                start_time=start_time,
                end_time=end_time,
                # A user filters its own requests (it sees no one else's metadata).
                metadata=(*metadata, None if is_admin(principal) else principal.subject)
                if metadata
                else None,
                limit=size + 1,
            )
        next_token = ""
        if len(entries) > size:
            entries = entries[:size]
            next_token = page_tokens.encode(["seq", entries[-1].sequence], filters)
        return wallet_pb2.ListTransactionsResponse(
            entries=[ledger_entry_message(entry, principal) for entry in entries],
            next_page_token=next_token,
        )

    async def GetBalanceAt(
        self, request: wallet_pb2.GetBalanceAtRequest, context: Any
    ) -> wallet_pb2.GetBalanceAtResponse:
        wallet_id = validation.wallet_id(request.wallet_id)
        at = validation.instant(request.time, request.HasField("time"))
        async with self._pool.connection() as conn:
            await _usable_wallet(conn, current_principal(), wallet_id)
            balance, sequence = await ledger_store.balance_at(conn, wallet_id, at)
        return wallet_pb2.GetBalanceAtResponse(balance=balance, sequence=sequence)

    # --- wallet status ---------------------------------------------------------------------

    async def UpdateWalletStatus(
        self, request: wallet_pb2.UpdateWalletStatusRequest, context: Any
    ) -> Any:
        principal = current_principal()
        require_admin_scope(principal)
        operation = status.SetStatus(
            principal,
            None,
            wallet_id=validation.wallet_id(request.wallet_id),
            status=validation.wallet_status(request.status),
            reason=validation.reason(request.reason),
        )
        return await self._engine.execute(operation, context)

    # --- events ----------------------------------------------------------------------------

    async def WatchEvents(
        self, request: wallet_pb2.WatchEventsRequest, context: Any
    ) -> AsyncIterator[wallet_pb2.WatchEventsResponse]:
        """Every event after the cursor, then each new one as it commits. Reads a page at a
        time and writes each event before reading on, so a slow reader only slows its own
        stream (gRPC's flow control holds the writes): nothing piles up in memory."""
        principal = current_principal()
        sees_all = watches_every_wallet(principal)
        wallet_id = validation.optional_wallet_id(request.wallet_id, "wallet_id")
        async with self._pool.connection() as conn:
            if wallet_id is not None and not sees_all:
                await _usable_wallet(conn, principal, wallet_id)
            position = await self._start_position(conn, request.after_cursor)
        owner = None if sees_all else principal.subject
        EVENT_STREAMS.inc()
        try:
            async for response in self._follow(position, owner, wallet_id, principal, sees_all):
                yield response
        finally:
            EVENT_STREAMS.dec()

    async def _follow(
        self,
        position: events_store.Position,
        owner: str | None,
        wallet_id: UUID | None,
        principal: Principal,
        sees_all: bool,
    ) -> AsyncIterator[wallet_pb2.WatchEventsResponse]:
        # Heartbeats say where the stream is: the last event's cursor, or its starting point's.
        cursor = _event_cursor(position, int(time.time()))
        yield _heartbeat(cursor)  # the first one says the stream has its starting point
        heartbeat_due = time.monotonic() + self._watching.heartbeat_seconds
        while True:
            generation = self._feed.generation
            async with self._pool.connection() as conn:
                page = await events_store.read_page(
                    conn, position, owner, wallet_id, EVENT_PAGE_SIZE
                )
            for stored in page.events:
                event = wallet_pb2.WalletEvent.FromString(stored.payload)
                event.cursor = cursor = _event_cursor(stored.position, event.create_time.seconds)
                yield wallet_pb2.WatchEventsResponse(
                    event=events.redacted(
                        event, sees_all or stored.requested_by == principal.subject
                    )
                )
                position = stored.position
                heartbeat_due = time.monotonic() + self._watching.heartbeat_seconds
            if len(page.events) == EVENT_PAGE_SIZE:
                continue  # more to read at once
            if time.monotonic() >= heartbeat_due:
                yield _heartbeat(cursor)
                heartbeat_due = time.monotonic() + self._watching.heartbeat_seconds
            # Committed events waiting for an older transaction: look again shortly.
            wait = HELD_BACK_RECHECK_SECONDS if page.held_back else heartbeat_due - time.monotonic()
            await self._feed.wait(generation, max(wait, 0.0))

    async def _start_position(self, conn: Conn, cursor: str) -> events_store.Position:
        if not cursor:
            return await events_store.horizon(conn)
        try:
            decoded = page_tokens.decode(cursor, ["events"])
        except ServiceError:
            decoded = None
        if not (
            decoded
            and len(decoded) == 4
            and decoded[0] == "ev"
            and all(type(part) is int and part >= 0 for part in decoded[1:])
        ):
            raise invalid_argument("INVALID_CURSOR", "after_cursor is not a cursor this API issued")
        _, xid, event_id, created = decoded
        if created < time.time() - self._watching.retention_days * 86400:
            raise failed_precondition(
                "CURSOR_EXPIRED", "events this old are no longer kept; start again from now"
            )
        if xid >= await events_store.next_transaction_id(conn):
            # Issued before the database was restored elsewhere or to an earlier instant:
            # resuming after it would skip the events written since.
            raise failed_precondition(
                "CURSOR_EXPIRED", "this cursor is from before a restore; start again from now"
            )
        return events_store.Position(xid, event_id)


def _event_cursor(position: events_store.Position, created_epoch: int) -> str:
    return page_tokens.encode(["ev", position.xid, position.id, created_epoch], ["events"])


def _heartbeat(cursor: str) -> wallet_pb2.WatchEventsResponse:
    return wallet_pb2.WatchEventsResponse(
        heartbeat=wallet_pb2.Heartbeat(time=to_timestamp(_now()), cursor=cursor)
    )


def _batch_leg(principal: Principal, index: int, movement: wallet_pb2.BatchMovement) -> batches.Leg:
    """One movement of a batch, validated like the RPC of its kind; errors name its index."""
    kind = movement.WhichOneof("movement")
    try:
        if kind == "credit":
            if not may_credit(principal):
                raise permission_denied(
                    "MISSING_SCOPE",
                    "crediting needs the wallet:credit scope",
                    scope="wallet:credit",
                )
            credit = movement.credit
            return batches.Leg(
                TransactionType.CREDIT,
                validation.amount(credit.amount),
                None,
                validation.wallet_id(credit.wallet_id),
                validation.reference(credit.reference),
                validation.metadata(credit.metadata),
            )
        if kind == "debit":
            debit = movement.debit
            return batches.Leg(
                TransactionType.DEBIT,
                validation.amount(debit.amount),
                validation.wallet_id(debit.wallet_id),
                None,
                validation.reference(debit.reference),
                validation.metadata(debit.metadata),
            )
        if kind == "transfer":
            transfer = movement.transfer
            source = validation.wallet_id(transfer.source_wallet_id, "source_wallet_id")
            destination = validation.wallet_id(
                transfer.destination_wallet_id, "destination_wallet_id"
            )
            if source == destination:
                raise invalid_argument(
                    "SAME_WALLET", "source and destination must be different wallets"
                )
            return batches.Leg(
                TransactionType.TRANSFER,
                validation.amount(transfer.amount),
                source,
                destination,
                validation.reference(transfer.reference),
                validation.metadata(transfer.metadata),
            )
        raise invalid_argument(
            "INVALID_BATCH", "a batch movement must be a credit, debit or transfer"
        )
    except ServiceError as error:
        error.metadata["index"] = str(index)
        raise


def _now() -> datetime:
    return datetime.now(UTC)


async def _usable_wallet(conn: Conn, principal: Principal, wallet_id: UUID) -> Wallet:
    """The wallet if the caller may use it; NOT_FOUND otherwise, so ids cannot be probed."""
    wallet = await wallets_store.get_wallet(conn, wallet_id)
    if wallet is None or not can_use(principal, wallet):
        raise not_found("WALLET_NOT_FOUND", f"wallet {wallet_id} not found")
    return wallet


async def _may_use_any(conn: Conn, principal: Principal, wallet_ids: list[UUID]) -> bool:
    if is_admin(principal):
        return True
    owners = await wallets_store.wallet_owners(conn, wallet_ids)
    return principal.subject in owners.values()


async def _may_see_transaction(conn: Conn, principal: Principal, transaction: Transaction) -> bool:
    """Either side of it, the caller that made it, or wallet:admin."""
    return transaction.requested_by == principal.subject or await _may_use_any(
        conn, principal, transaction.wallet_ids
    )


async def _may_see_hold(conn: Conn, principal: Principal, hold: Hold) -> bool:
    """The caller that placed it, the held wallet's owner, or wallet:admin."""
    return hold.requested_by == principal.subject or await _may_use_any(
        conn, principal, [hold.wallet_id]
    )
