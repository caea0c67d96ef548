"""The WalletService RPC handlers: validate, authorise, then either hand a money operation to
the engine (engine/) or read through the store (store/), and answer. They speak in domain
terms: SQL lives in the store, locks and retries in the engine."""

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg_pool

from shared.errors import already_exists, invalid_argument, not_found
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from shared.tokens import Principal
from wallet_service import page_tokens, validation
from wallet_service.authentication import current_principal
from wallet_service.currencies import normalise_currency
from wallet_service.engine import operations
from wallet_service.engine.runner import Engine
from wallet_service.messages import (
    hold_message,
    ledger_entry_message,
    transaction_message,
    wallet_message,
)
from wallet_service.models import Hold, Transaction, Wallet
from wallet_service.permissions import can_use, is_admin, require_credit_scope
from wallet_service.store import Conn
from wallet_service.store import holds as holds_store
from wallet_service.store import ledger as ledger_store
from wallet_service.store import wallets as wallets_store


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Any], engine: Engine) -> None:
        self._pool = pool
        self._engine = engine

    # --- wallets ---------------------------------------------------------------------------

    async def CreateWallet(
        self, request: wallet_pb2.CreateWalletRequest, context: Any
    ) -> wallet_pb2.CreateWalletResponse:
        principal = current_principal()
        currency, _ = normalise_currency(request.currency)
        async with self._pool.connection() as conn:
            wallet = await wallets_store.insert_wallet(conn, principal.subject, currency)
        if wallet is None:
            raise already_exists(
                "WALLET_EXISTS", f"you already have a {currency} wallet", currency=currency
            )
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
        operation = operations.Credit(
            principal,
            validation.idempotency_key(request.idempotency_key),
            amount=validation.amount(request.amount),
            destination=validation.wallet_id(request.wallet_id),
            reference=validation.reference(request.reference),
        )
        return await self._engine.execute(operation, context)

    async def Debit(self, request: wallet_pb2.DebitRequest, context: Any) -> Any:
        operation = operations.Debit(
            current_principal(),
            validation.idempotency_key(request.idempotency_key),
            amount=validation.amount(request.amount),
            source=validation.wallet_id(request.wallet_id),
            reference=validation.reference(request.reference),
        )
        return await self._engine.execute(operation, context)

    async def Transfer(self, request: wallet_pb2.TransferRequest, context: Any) -> Any:
        source = validation.wallet_id(request.source_wallet_id, "source_wallet_id")
        destination = validation.wallet_id(request.destination_wallet_id, "destination_wallet_id")
        if source == destination:
            raise invalid_argument(
                "SAME_WALLET", "source and destination must be different wallets"
            )
        operation = operations.Transfer(
            current_principal(),
            validation.idempotency_key(request.idempotency_key),
            amount=validation.amount(request.amount),
            source=source,
            destination=destination,
            reference=validation.reference(request.reference),
        )
        return await self._engine.execute(operation, context)

    async def RefundTransaction(
        self, request: wallet_pb2.RefundTransactionRequest, context: Any
    ) -> Any:
        operation = operations.Refund(
            current_principal(),
            validation.idempotency_key(request.idempotency_key),
            transaction_id=validation.transaction_id(request.transaction_id),
            amount=validation.amount_or_all(request.amount),
            reference=validation.reference(request.reference),
        )
        return await self._engine.execute(operation, context)

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
        operation = operations.CreateHold(
            current_principal(),
            validation.idempotency_key(request.idempotency_key),
            wallet_id=wallet_id,
            amount=validation.amount(request.amount),
            destination=destination,
            expires_at=validation.expiry(request.expire_time, request.HasField("expire_time")),
            reference=validation.reference(request.reference),
        )
        return await self._engine.execute(operation, context)

    async def CaptureHold(self, request: wallet_pb2.CaptureHoldRequest, context: Any) -> Any:
        operation = operations.CaptureHold(
            current_principal(),
            validation.idempotency_key(request.idempotency_key),
            hold_id=validation.hold_id(request.hold_id),
            amount=validation.amount_or_all(request.amount),
            reference=validation.reference(request.reference),
        )
        return await self._engine.execute(operation, context)

    async def VoidHold(self, request: wallet_pb2.VoidHoldRequest, context: Any) -> Any:
        operation = operations.VoidHold(
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
