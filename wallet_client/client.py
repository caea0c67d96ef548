"""`WalletClient`: the asyncio client of both services, one method per RPC.

Each method builds the request, sends it with `wallet_client.calls.unary` (deadline, token,
retries) and returns the RPC's response message from `shared.gen` unchanged, so nothing the
contract says is lost and a field added later reaches callers at once. Failures raise
`wallet_client.errors.WalletError` subclasses.
"""

import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import grpc

from shared.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_client.calls import (
    CONNECTION_LOST,
    NEVER,
    UNKNOWN_OUTCOME,
    RetryPolicy,
    new_idempotency_key,
    unary,
)
from wallet_client.errors import NotLoggedIn
from wallet_client.events import EventStream
from wallet_client.session import Session

ResponseT = TypeVar("ResponseT")
ItemT = TypeVar("ItemT")
Metadata = Mapping[str, str] | None

# Reconnect within about a second of a server's return: grpc's own backoff grows to two
# minutes, far beyond any retry budget, and calls fail at once while it waits.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class _Page(Protocol):
    @property
    def next_page_token(self) -> str: ...


PageT = TypeVar("PageT", bound=_Page)


class WalletClient:
    """Calls `auth.v1.AuthService` and `wallet.v1.WalletService` as one caller: a user after
    `login`, a service account after `login_service`, or whoever `use_token`'s token names.

    Create it in a coroutine (grpc.aio channels belong to the running event loop) and close it
    (`async with WalletClient(...) as client:`). `channel_credentials` (for example
    `grpc.ssl_channel_credentials(ca)`) turns TLS on for both channels.
    """

    def __init__(
        self,
        wallet_target: str = "localhost:50052",
        auth_target: str = "localhost:50051",
        *,
        channel_credentials: grpc.ChannelCredentials | None = None,
        retry: RetryPolicy | None = None,
        refresh_margin: float = 60.0,
        channel_options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
    ) -> None:
        self._channels = [
            _channel(target, channel_credentials, channel_options)
            for target in (auth_target, wallet_target)
        ]
        # The generated stubs are untyped; `calls.unary` gives their answers a type.
        self._auth = auth_pb2_grpc.AuthServiceStub(self._channels[0])  # type: ignore[no-untyped-call]
        self._wallet = wallet_pb2_grpc.WalletServiceStub(self._channels[1])  # type: ignore[no-untyped-call]
        self._policy = retry or RetryPolicy()
        # Refresh an access token this many seconds before it expires (at most half its life).
        self._session = Session(self._auth, self._policy, refresh_margin)

    async def __aenter__(self) -> "WalletClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()
        for channel in self._channels:
            await channel.close(grace=None)

    def with_retry_policy(self, retry: RetryPolicy) -> "WalletClient":
        """The same client (channels, session) with other deadlines and retries, for the calls
        made through the copy: `await client.with_retry_policy(fast).debit(...)`. Closing
        either closes both."""
        view = copy.copy(self)
        view._policy = retry
        return view

    # --- identity: auth.v1.AuthService -----------------------------------------------------

    async def register(
        self, email: str, password: str, display_name: str
    ) -> auth_pb2.RegisterResponse:
        """Creates a user (does not log in). Not retried: a repeat would answer EMAIL_TAKEN."""
        request = auth_pb2.RegisterRequest(
            email=email, password=password, display_name=display_name
        )
        return await self._auth_call("Register", request, auth_pb2.RegisterResponse, NEVER)

    async def login(self, email: str, password: str) -> auth_pb2.LoginResponse:
        """Logs in as a user: later calls carry its access token, refreshed as needed."""
        request = auth_pb2.LoginRequest(email=email, password=password)
        response = await self._auth_call("Login", request, auth_pb2.LoginResponse, UNKNOWN_OUTCOME)
        self._session.start_user(response.tokens)
        return response

    async def login_service(
        self, client_id: str, client_secret: str
    ) -> auth_pb2.IssueServiceTokenResponse:
        """Logs in as a service account: a new token is issued whenever the last is due."""
        return await self._session.start_service(client_id, client_secret)

    def use_token(self, access_token: str) -> None:
        """Calls with this access token as is, never renewed."""
        self._session.start_static(access_token)

    def use_tokens(self, tokens: auth_pb2.TokenPair) -> None:
        """Resumes a user's session from a saved token pair (see `tokens`)."""
        self._session.start_user(tokens)

    @property
    def tokens(self) -> auth_pb2.TokenPair | None:
        """The user's current token pair (None unless logged in as a user). Saving it lets a
        process resume the session with `use_tokens`; its refresh token works once."""
        return self._session.user_tokens

    async def access_token(self) -> str:
        """The access token the next call would send (renewed first if due), for a call made
        another way: another stub, grpcurl."""
        return await self._session.access_token()

    async def refresh_tokens(self) -> None:
        """Renews the access token now (RefreshToken for a user, IssueServiceToken for a
        service). The client does this by itself; this is for when you want it earlier."""
        await self._session.renew_now()

    async def logout(self, *, all_sessions: bool = False) -> auth_pb2.LogoutResponse:
        """Ends this session (with `all_sessions`, every session of the user) and forgets the
        tokens. The wallet service refuses the access token within its revocation interval."""
        tokens = self._session.user_tokens
        if tokens is None:
            raise NotLoggedIn("logout needs a user's session (login)")
        request = auth_pb2.LogoutRequest(
            refresh_token=tokens.refresh_token, all_sessions=all_sessions
        )
        response = await self._auth_call(
            "Logout", request, auth_pb2.LogoutResponse, UNKNOWN_OUTCOME
        )
        self._session.end()
        return response

    async def get_me(self) -> auth_pb2.GetMeResponse:
        return await self._auth_call(
            "GetMe", auth_pb2.GetMeRequest(), auth_pb2.GetMeResponse, CONNECTION_LOST, True
        )

    async def change_password(
        self, current_password: str, new_password: str
    ) -> auth_pb2.ChangePasswordResponse:
        """Changes the password; every session of the user ends, this one too: log in again.
        Not retried: a repeat after a lost answer would say INVALID_CREDENTIALS."""
        request = auth_pb2.ChangePasswordRequest(
            current_password=current_password, new_password=new_password
        )
        response = await self._auth_call(
            "ChangePassword", request, auth_pb2.ChangePasswordResponse, NEVER, True
        )
        self._session.end()
        return response

    # --- wallets ---------------------------------------------------------------------------

    async def create_wallet(
        self, currency: str, *, metadata: Metadata = None
    ) -> wallet_pb2.CreateWalletResponse:
        """Opens the caller's wallet in `currency`. Retried after UNAVAILABLE only, like a read;
        such a repeat may answer WalletExists: the first attempt made it."""
        request = wallet_pb2.CreateWalletRequest(currency=currency, metadata=metadata)
        return await self._read("CreateWallet", request, wallet_pb2.CreateWalletResponse)

    async def get_wallet(self, wallet_id: str) -> wallet_pb2.GetWalletResponse:
        request = wallet_pb2.GetWalletRequest(wallet_id=wallet_id)
        return await self._read("GetWallet", request, wallet_pb2.GetWalletResponse)

    async def list_wallets(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> wallet_pb2.ListWalletsResponse:
        request = wallet_pb2.ListWalletsRequest(page_size=page_size, page_token=page_token)
        return await self._read("ListWallets", request, wallet_pb2.ListWalletsResponse)

    def iter_wallets(self, *, page_size: int = 0) -> AsyncIterator[wallet_pb2.Wallet]:
        """Every wallet of the caller, oldest first, fetched a page at a time."""
        return _items(
            lambda token: self.list_wallets(page_size=page_size, page_token=token),
            lambda page: page.wallets,
        )

    async def update_wallet_status(
        self, wallet_id: str, status: wallet_pb2.WalletStatus, reason: str
    ) -> wallet_pb2.UpdateWalletStatusResponse:
        """Sets a wallet's status (`wallet:admin`). Idempotent by nature, so retried like a
        money call; a retried close may answer WalletClosed: it is closed."""
        request = wallet_pb2.UpdateWalletStatusRequest(
            wallet_id=wallet_id, status=status, reason=reason
        )
        return await self._wallet_call(
            "UpdateWalletStatus", request, wallet_pb2.UpdateWalletStatusResponse, UNKNOWN_OUTCOME
        )

    async def get_balance_at(self, wallet_id: str, at: datetime) -> wallet_pb2.GetBalanceAtResponse:
        """The posted balance at instant `at` (a timezone-aware datetime, not in the future)."""
        request = wallet_pb2.GetBalanceAtRequest(wallet_id=wallet_id, time=at)
        return await self._read("GetBalanceAt", request, wallet_pb2.GetBalanceAtResponse)

    # --- money: every call has an idempotency key, made up when not given -------------------

    async def credit(
        self,
        wallet_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        reference: str = "",
        metadata: Metadata = None,
    ) -> wallet_pb2.CreditResponse:
        """Adds `amount` minor units (`wallet:credit`)."""
        return await self._money(
            "Credit",
            wallet_pb2.CreditRequest,
            wallet_pb2.CreditResponse,
            wallet_id=wallet_id,
            amount=amount,
            idempotency_key=idempotency_key,
            reference=reference,
            metadata=metadata,
        )

    async def debit(
        self,
        wallet_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        reference: str = "",
        metadata: Metadata = None,
    ) -> wallet_pb2.DebitResponse:
        """Takes `amount` minor units out of one of the caller's wallets."""
        return await self._money(
            "Debit",
            wallet_pb2.DebitRequest,
            wallet_pb2.DebitResponse,
            wallet_id=wallet_id,
            amount=amount,
            idempotency_key=idempotency_key,
            reference=reference,
            metadata=metadata,
        )

    async def transfer(
        self,
        source_wallet_id: str,
        destination_wallet_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        reference: str = "",
        metadata: Metadata = None,
    ) -> wallet_pb2.TransferResponse:
        return await self._money(
            "Transfer",
            wallet_pb2.TransferRequest,
            wallet_pb2.TransferResponse,
            source_wallet_id=source_wallet_id,
            destination_wallet_id=destination_wallet_id,
            amount=amount,
            idempotency_key=idempotency_key,
            reference=reference,
            metadata=metadata,
        )

    async def execute_batch(
        self,
        movements: Sequence[wallet_pb2.BatchMovement],
        *,
        idempotency_key: str | None = None,
    ) -> wallet_pb2.ExecuteBatchResponse:
        """Applies up to 100 movements all together or not at all (build them with
        `credit_movement`, `debit_movement`, `transfer_movement`); a refusal's `batch_index`
        names the movement that failed."""
        return await self._money(
            "ExecuteBatch",
            wallet_pb2.ExecuteBatchRequest,
            wallet_pb2.ExecuteBatchResponse,
            idempotency_key=idempotency_key,
            movements=movements,
        )

    async def refund_transaction(
        self,
        transaction_id: str,
        amount: int = 0,
        *,
        idempotency_key: str | None = None,
        reference: str = "",
        metadata: Metadata = None,
    ) -> wallet_pb2.RefundTransactionResponse:
        """Refunds `amount` (0: all that is left) of a transaction, back the way it came."""
        return await self._money(
            "RefundTransaction",
            wallet_pb2.RefundTransactionRequest,
            wallet_pb2.RefundTransactionResponse,
            transaction_id=transaction_id,
            amount=amount,
            idempotency_key=idempotency_key,
            reference=reference,
            metadata=metadata,
        )

    async def get_transaction(self, transaction_id: str) -> wallet_pb2.GetTransactionResponse:
        request = wallet_pb2.GetTransactionRequest(transaction_id=transaction_id)
        return await self._read("GetTransaction", request, wallet_pb2.GetTransactionResponse)

    async def list_transactions(
        self,
        wallet_id: str,
        *,
        transaction_type: wallet_pb2.TransactionType = wallet_pb2.TRANSACTION_TYPE_UNSPECIFIED,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        metadata_key: str = "",
        metadata_value: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> wallet_pb2.ListTransactionsResponse:
        """A page of the wallet's ledger entries, newest first, filtered by type, time range
        `[start_time, end_time)` and one metadata pair."""
        request = wallet_pb2.ListTransactionsRequest(
            wallet_id=wallet_id,
            type=transaction_type,
            start_time=start_time,
            end_time=end_time,
            metadata_key=metadata_key,
            metadata_value=metadata_value,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._read("ListTransactions", request, wallet_pb2.ListTransactionsResponse)

    def iter_transactions(
        self,
        wallet_id: str,
        *,
        transaction_type: wallet_pb2.TransactionType = wallet_pb2.TRANSACTION_TYPE_UNSPECIFIED,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        metadata_key: str = "",
        metadata_value: str = "",
        page_size: int = 0,
    ) -> AsyncIterator[wallet_pb2.LedgerEntry]:
        """Every ledger entry of the wallet that matches, newest first, a page at a time."""
        return _items(
            lambda token: self.list_transactions(
                wallet_id,
                transaction_type=transaction_type,
                start_time=start_time,
                end_time=end_time,
                metadata_key=metadata_key,
                metadata_value=metadata_value,
                page_size=page_size,
                page_token=token,
            ),
            lambda page: page.entries,
        )

    # --- holds -----------------------------------------------------------------------------

    async def create_hold(
        self,
        wallet_id: str,
        amount: int,
        *,
        destination_wallet_id: str = "",
        expire_time: datetime | None = None,
        idempotency_key: str | None = None,
        reference: str = "",
        metadata: Metadata = None,
    ) -> wallet_pb2.CreateHoldResponse:
        """Reserves `amount` until captured, voided or `expire_time` (default: 7 days)."""
        return await self._money(
            "CreateHold",
            wallet_pb2.CreateHoldRequest,
            wallet_pb2.CreateHoldResponse,
            wallet_id=wallet_id,
            amount=amount,
            destination_wallet_id=destination_wallet_id,
            expire_time=expire_time,
            idempotency_key=idempotency_key,
            reference=reference,
            metadata=metadata,
        )

    async def capture_hold(
        self,
        hold_id: str,
        amount: int = 0,
        *,
        idempotency_key: str | None = None,
        reference: str = "",
        metadata: Metadata = None,
    ) -> wallet_pb2.CaptureHoldResponse:
        """Posts `amount` (0: all) of a live hold; the rest is released."""
        return await self._money(
            "CaptureHold",
            wallet_pb2.CaptureHoldRequest,
            wallet_pb2.CaptureHoldResponse,
            hold_id=hold_id,
            amount=amount,
            idempotency_key=idempotency_key,
            reference=reference,
            metadata=metadata,
        )

    async def void_hold(
        self, hold_id: str, *, idempotency_key: str | None = None
    ) -> wallet_pb2.VoidHoldResponse:
        return await self._money(
            "VoidHold",
            wallet_pb2.VoidHoldRequest,
            wallet_pb2.VoidHoldResponse,
            hold_id=hold_id,
            idempotency_key=idempotency_key,
        )

    async def get_hold(self, hold_id: str) -> wallet_pb2.GetHoldResponse:
        request = wallet_pb2.GetHoldRequest(hold_id=hold_id)
        return await self._read("GetHold", request, wallet_pb2.GetHoldResponse)

    async def list_holds(
        self,
        wallet_id: str,
        *,
        status: wallet_pb2.HoldStatus = wallet_pb2.HOLD_STATUS_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
    ) -> wallet_pb2.ListHoldsResponse:
        request = wallet_pb2.ListHoldsRequest(
            wallet_id=wallet_id, status=status, page_size=page_size, page_token=page_token
        )
        return await self._read("ListHolds", request, wallet_pb2.ListHoldsResponse)

    def iter_holds(
        self,
        wallet_id: str,
        *,
        status: wallet_pb2.HoldStatus = wallet_pb2.HOLD_STATUS_UNSPECIFIED,
        page_size: int = 0,
    ) -> AsyncIterator[wallet_pb2.Hold]:
        """Every hold of the wallet (of one status, if given), newest first."""
        return _items(
            lambda token: self.list_holds(
                wallet_id, status=status, page_size=page_size, page_token=token
            ),
            lambda page: page.holds,
        )

    # --- events ----------------------------------------------------------------------------

    def watch_events(
        self, *, after_cursor: str = "", wallet_id: str = "", max_outage: float | None = None
    ) -> EventStream:
        """`async for event in client.watch_events():` every event after `after_cursor` (empty:
        from now on), resuming by itself from the last one after a broken stream. Resuming
        needs a cursor: a stream started from now that breaks before its first event resumes
        from the new now. Give up after `max_outage` seconds without a message (None: never)."""
        return EventStream(
            self._wallet,
            self._session,
            self._policy,
            after_cursor=after_cursor,
            wallet_id=wallet_id,
            max_outage=max_outage,
        )

    # --- how calls are sent ----------------------------------------------------------------

    async def _money(
        self,
        rpc: str,
        request_type: Callable[..., Any],
        response_type: type[ResponseT],
        *,
        idempotency_key: str | None,
        **fields: Any,
    ) -> ResponseT:
        """A call that carries an idempotency key (the caller's, or a new one): every retry
        sends the same request, with the same key."""
        key = idempotency_key or new_idempotency_key()
        return await unary(
            self._wallet,
            rpc,
            request_type(idempotency_key=key, **fields),
            response_type,
            policy=self._policy,
            retry_on=UNKNOWN_OUTCOME,
            tokens=self._session,
            idempotency_key=key,
        )

    async def _read(self, rpc: str, request: Any, response_type: type[ResponseT]) -> ResponseT:
        return await self._wallet_call(rpc, request, response_type, CONNECTION_LOST)

    async def _wallet_call(
        self,
        rpc: str,
        request: Any,
        response_type: type[ResponseT],
        retry_on: frozenset[grpc.StatusCode],
    ) -> ResponseT:
        return await unary(
            self._wallet,
            rpc,
            request,
            response_type,
            policy=self._policy,
            retry_on=retry_on,
            tokens=self._session,
        )

    async def _auth_call(
        self,
        rpc: str,
        request: Any,
        response_type: type[ResponseT],
        retry_on: frozenset[grpc.StatusCode],
        authenticated: bool = False,
    ) -> ResponseT:
        return await unary(
            self._auth,
            rpc,
            request,
            response_type,
            policy=self._policy,
            retry_on=retry_on,
            tokens=self._session if authenticated else None,
        )


# --- batch movements -----------------------------------------------------------------------


def credit_movement(
    wallet_id: str, amount: int, *, reference: str = "", metadata: Metadata = None
) -> wallet_pb2.BatchMovement:
    credit = wallet_pb2.BatchCredit(
        wallet_id=wallet_id, amount=amount, reference=reference, metadata=metadata
    )
    return wallet_pb2.BatchMovement(credit=credit)


def debit_movement(
    wallet_id: str, amount: int, *, reference: str = "", metadata: Metadata = None
) -> wallet_pb2.BatchMovement:
    debit = wallet_pb2.BatchDebit(
        wallet_id=wallet_id, amount=amount, reference=reference, metadata=metadata
    )
    return wallet_pb2.BatchMovement(debit=debit)


def transfer_movement(
    source_wallet_id: str,
    destination_wallet_id: str,
    amount: int,
    *,
    reference: str = "",
    metadata: Metadata = None,
) -> wallet_pb2.BatchMovement:
    transfer = wallet_pb2.BatchTransfer(
        source_wallet_id=source_wallet_id,
        destination_wallet_id=destination_wallet_id,
        amount=amount,
        reference=reference,
        metadata=metadata,
    )
    return wallet_pb2.BatchMovement(transfer=transfer)


# --- helpers -------------------------------------------------------------------------------


def _channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]]
) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, credentials, options=list(options))


async def _items(
    fetch: Callable[[str], Awaitable[PageT]], items: Callable[[PageT], Iterable[ItemT]]
) -> AsyncIterator[ItemT]:
    """The items of every page, fetching the next page only when the last item was taken."""
    page_token = ""
    while True:
        page = await fetch(page_token)
        for item in items(page):
            yield item
        page_token = page.next_page_token
        if not page_token:
            return
