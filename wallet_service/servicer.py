"""The WalletService RPC handlers: validate, authorise, call the ledger or the repository,
answer. They speak in domain terms; SQL lives in repository.py, money movement in ledger.py."""

from typing import Any
from uuid import UUID

import psycopg_pool

from shared.errors import already_exists, invalid_argument, not_found
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from shared.tokens import Principal
from wallet_service import page_tokens, validation
from wallet_service import repository as repo
from wallet_service.authentication import current_principal
from wallet_service.currencies import normalise_currency
from wallet_service.ledger import Limits, WalletTurns, move_money
from wallet_service.messages import ledger_entry_message, transaction_message, wallet_message
from wallet_service.models import Movement, MovementResult, TransactionType, Wallet
from wallet_service.permissions import can_use, may_use_wallet_of, require_credit_scope


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[Any], limits: Limits) -> None:
        self._pool = pool
        self._limits = limits
        self._turns = WalletTurns()

    async def CreateWallet(
        self, request: wallet_pb2.CreateWalletRequest, context: Any
    ) -> wallet_pb2.CreateWalletResponse:
        principal = current_principal()
        currency, _ = normalise_currency(request.currency)
        async with self._pool.connection() as conn:
            wallet = await repo.insert_wallet(conn, principal.subject, currency)
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
        after = page_tokens.wallet_cursor(cursor) if cursor else None
        async with self._pool.connection() as conn:
            wallets = await repo.list_wallets(conn, principal.subject, after, size + 1)
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

    async def Credit(
        self, request: wallet_pb2.CreditRequest, context: Any
    ) -> wallet_pb2.CreditResponse:
        principal = current_principal()
        require_credit_scope(principal)
        wallet_id = validation.wallet_id(request.wallet_id)
        movement = Movement(
            type=TransactionType.CREDIT,
            amount=validation.amount(request.amount),
            source_wallet_id=None,
            destination_wallet_id=wallet_id,
            reference=validation.reference(request.reference),
        )
        result = await self._move(principal, movement, request.idempotency_key, context)
        response = wallet_pb2.CreditResponse(
            transaction=transaction_message(result.transaction, principal)
        )
        # A crediting service is not told a user's balance.
        if may_use_wallet_of(principal, result.owners[wallet_id]):
            response.balance_after = result.balances_after[wallet_id]
        return response

    async def Debit(
        self, request: wallet_pb2.DebitRequest, context: Any
    ) -> wallet_pb2.DebitResponse:
        principal = current_principal()
        wallet_id = validation.wallet_id(request.wallet_id)
        movement = Movement(
            type=TransactionType.DEBIT,
            amount=validation.amount(request.amount),
            source_wallet_id=wallet_id,
            destination_wallet_id=None,
            reference=validation.reference(request.reference),
        )
        result = await self._move(principal, movement, request.idempotency_key, context)
        return wallet_pb2.DebitResponse(
            transaction=transaction_message(result.transaction, principal),
            balance_after=result.balances_after[wallet_id],
        )

    async def Transfer(
        self, request: wallet_pb2.TransferRequest, context: Any
    ) -> wallet_pb2.TransferResponse:
        principal = current_principal()
        source_id = validation.wallet_id(request.source_wallet_id, "source_wallet_id")
        destination_id = validation.wallet_id(
            request.destination_wallet_id, "destination_wallet_id"
        )
        if source_id == destination_id:
            raise invalid_argument(
                "SAME_WALLET", "source and destination must be different wallets"
            )
        movement = Movement(
            type=TransactionType.TRANSFER,
            amount=validation.amount(request.amount),
            source_wallet_id=source_id,
            destination_wallet_id=destination_id,
            reference=validation.reference(request.reference),
        )
        result = await self._move(principal, movement, request.idempotency_key, context)
        response = wallet_pb2.TransferResponse(
            transaction=transaction_message(result.transaction, principal),
            source_balance_after=result.balances_after[source_id],
        )
        if may_use_wallet_of(principal, result.owners[destination_id]):
            response.destination_balance_after = result.balances_after[destination_id]
        return response

    async def GetTransaction(
        self, request: wallet_pb2.GetTransactionRequest, context: Any
    ) -> wallet_pb2.GetTransactionResponse:
        principal = current_principal()
        transaction_id = validation.transaction_id(request.transaction_id)
        async with self._pool.connection() as conn:
            transaction = await repo.get_transaction(conn, transaction_id)
            visible = transaction is not None and (
                transaction.requested_by == principal.subject
                or await self._may_use_any(
                    conn,
                    principal,
                    [transaction.source_wallet_id, transaction.destination_wallet_id],
                )
            )
        if transaction is None or not visible:
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
            entries = await repo.list_ledger_entries(
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

    # --- helpers ---------------------------------------------------------------------------

    async def _move(
        self, principal: Principal, movement: Movement, key: str, context: Any
    ) -> MovementResult:
        return await move_money(
            self._pool,
            self._turns,
            principal,
            movement,
            validation.idempotency_key(key),
            context,
            self._limits,
        )

    @staticmethod
    async def _may_use_any(
        conn: repo.Conn, principal: Principal, wallet_ids: list[UUID | None]
    ) -> bool:
        for wallet_id in wallet_ids:
            if wallet_id is None:
                continue
            wallet = await repo.get_wallet(conn, wallet_id)
            if wallet is not None and can_use(principal, wallet):
                return True
        return False


async def _usable_wallet(conn: repo.Conn, principal: Principal, wallet_id: UUID) -> Wallet:
    """The wallet if the caller may use it; NOT_FOUND otherwise, so ids cannot be probed."""
    wallet = await repo.get_wallet(conn, wallet_id)
    if wallet is None or not can_use(principal, wallet):
        raise not_found("WALLET_NOT_FOUND", f"wallet {wallet_id} not found")
    return wallet
