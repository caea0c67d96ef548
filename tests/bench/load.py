"""The load client: several processes, each an asyncio loop with grpc.aio channels.

`LoadClient` (in the bench's process) starts BENCH_CLIENT_PROCESSES processes and calls the
methods of a `LoadProcess` in each of them at once, through a pipe. A process opens
BENCH_CHANNELS connections to each service (the kernel spreads connections, not calls, over a
service's workers), creates and funds its share of the wallets, then runs scenarios:
closed loop, its share of the calls in flight, each slot sending its next call as soon as the
last one answered, for warm-up plus the measured window. It reports the calls that ended in
the window, their latencies, the errors by status code and reason, and its own CPU time.

Who calls what (SPEC): the payments service (`wallet:credit`) credits any wallet; each wallet
belongs to a service account of its own (cheap to create, unlike users, whose bcrypt hash
takes a quarter of a second at cost 12), which debits it, transfers out of it, places holds on
it and reads it; Login is by users registered for it.
"""

import asyncio
import contextlib
import itertools
import multiprocessing
import random
import resource
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import grpc
import psycopg_pool

from auth_service.admin import create_service_account
from shared.errors import error_info
from shared.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tests.bench.results import Measurement

CALL_TIMEOUT_SECONDS = 10.0
SETUP_IN_FLIGHT = 32  # per process, while creating and funding wallets
FUNDS = 10**12  # each wallet's, so that debits and transfers never run short
HOT_FUNDS = 10**15
BATCH = 100  # credits per ExecuteBatch while funding (its maximum)
HISTORY_ENTRIES = 30  # of the wallets that ListTransactions reads
HISTORY_WALLETS = 100  # in all
PAGE_SIZE = 20
AMOUNT = 100
OWNER_SCOPE = "bench"  # a service account needs a scope; owning wallets needs none
PASSWORD = "correct horse battery staple"
T = TypeVar("T")


@dataclass(frozen=True)
class Account:
    """A service account's credentials, as IssueServiceToken takes them."""

    client_id: str
    secret: str


@dataclass(frozen=True)
class Window:
    """One scenario's run in one process: its calls in flight and its times (monotonic)."""

    scenario: str
    in_flight: int
    start: float  # warm-up starts
    warmup: float
    seconds: float


async def bounded(coroutines: Iterable[Coroutine[Any, Any, T]], limit: int) -> list[T]:
    """Awaits the coroutines, at most `limit` at a time; their results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine: Coroutine[Any, Any, T]) -> T:
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(one(coroutine) for coroutine in coroutines))


def describe(error: grpc.aio.AioRpcError) -> str:
    """`CODE REASON` of a failed call (the reason of its ErrorInfo, if any)."""
    info = error_info(error)
    return f"{error.code().name} {info.reason if info else error.details()}"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class LoadProcess:
    """One load process's channels, identities, wallets and scenarios."""

    def __init__(self, index: int, auth: str, wallet: str, channels: int) -> None:
        self.index = index
        self._addresses = (auth, wallet)
        self._channel_count = channels
        self._open()
        self._keys = itertools.count()
        self._run = ""
        self._tokens: dict[str, tuple[tuple[tuple[str, str], ...], float]] = {}
        self._accounts: dict[str, Account] = {}
        self.own: list[tuple[str, str]] = []  # (wallet id, owner's client id)
        self.history: list[tuple[str, str]] = []  # own wallets with HISTORY_ENTRIES entries
        self.wallets: list[str] = []  # every uniform wallet, once shared
        self.hot = ""
        self.hot_owner = ""
        self.payments = ""
        self.emails: list[str] = []

    def _open(self) -> None:
        # A local subchannel pool: each channel its own connection, not one shared by all.
        options = [("grpc.use_local_subchannel_pool", 1)]
        count = self._channel_count
        self._channels = [
            grpc.aio.insecure_channel(address, options=options)
            for address in self._addresses
            for _ in range(count)
        ]
        self._auth = itertools.cycle(
            auth_pb2_grpc.AuthServiceStub(channel) for channel in self._channels[:count]
        )
        self._wallet = itertools.cycle(
            wallet_pb2_grpc.WalletServiceStub(channel) for channel in self._channels[count:]
        )

    async def connect(self) -> None:
        """Connects every channel now (they would on their first call)."""
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in self._channels)),
            CALL_TIMEOUT_SECONDS,
        )

    async def reconnect(self) -> None:
        """New connections, which the kernel may spread differently over the workers."""
        await self.close()
        self._open()
        await self.connect()

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels))

    # --- identities ----------------------------------------------------------------------

    async def _issue(self, account: Account) -> None:
        response = await next(self._auth).IssueServiceToken(
            auth_pb2.IssueServiceTokenRequest(
                client_id=account.client_id, client_secret=account.secret
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        expires = response.access_token_expire_time.ToSeconds()
        self._accounts[account.client_id] = account
        self._tokens[account.client_id] = (bearer(response.access_token), expires)

    def _as(self, client_id: str) -> tuple[tuple[str, str], ...]:
        return self._tokens[client_id][0]

    async def refresh_tokens(self, valid_for: float) -> None:
        """New tokens for every identity whose token would expire within `valid_for` s."""
        soon = time.time() + valid_for
        stale = [
            self._accounts[id_] for id_, (_, expires) in self._tokens.items() if expires < soon
        ]
        await bounded((self._issue(account) for account in stale), SETUP_IN_FLIGHT)

    # --- setting up ----------------------------------------------------------------------

    async def populate(
        self,
        run: str,
        database_url: str,
        names: list[str],
        payments: Account,
        hot_owner: Account,
        fund: bool,
        history: int,
    ) -> list[str]:
        """Creates an owner and its wallet for each name; funds them if asked, and gives the
        first `history` of them a history; returns their ids."""
        self._run = run
        self.payments, self.hot_owner = payments.client_id, hot_owner.client_id
        await self._issue(payments)
        await self._issue(hot_owner)
        async with psycopg_pool.AsyncConnectionPool(
            database_url, min_size=1, max_size=4, open=False
        ) as pool:
            accounts = await bounded(
                (create_service_account(pool, name, [OWNER_SCOPE]) for name in names), 8
            )
        owners = [Account(*account) for account in accounts]
        await bounded((self._issue(owner) for owner in owners), SETUP_IN_FLIGHT)
        wallets = await bounded((self._create_wallet(owner) for owner in owners), SETUP_IN_FLIGHT)
        self.own = list(zip(wallets, (owner.client_id for owner in owners), strict=True))
        if fund:
            batches = [wallets[i : i + BATCH] for i in range(0, len(wallets), BATCH)]
            await bounded((self._credit_each(batch, FUNDS) for batch in batches), 8)
        self.history = self.own[:history]
        await bounded(
            (self._credit_each([wallet] * HISTORY_ENTRIES, 1) for wallet, _ in self.history), 8
        )
        return wallets

    async def _create_wallet(self, owner: Account) -> str:
        response = await next(self._wallet).CreateWallet(
            wallet_pb2.CreateWalletRequest(currency="EUR"),
            metadata=self._as(owner.client_id),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return str(response.wallet.id)

    async def _credit_each(self, wallets: list[str], amount: int) -> None:
        """One ExecuteBatch by the payments service: `amount` to each wallet of the list."""
        movements = [
            wallet_pb2.BatchMovement(credit=wallet_pb2.BatchCredit(wallet_id=wallet, amount=amount))
            for wallet in wallets
        ]
        await next(self._wallet).ExecuteBatch(
            wallet_pb2.ExecuteBatchRequest(idempotency_key=self._key(), movements=movements),
            metadata=self._as(self.payments),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    async def hot_wallet(self, run: str, payments: Account, hot_owner: Account) -> str:
        """The hot wallet: its owner's, funded for every hot debit and transfer."""
        self._run, self.payments = run, payments.client_id
        await self._issue(payments)
        await self._issue(hot_owner)
        wallet = await self._create_wallet(hot_owner)
        await self._credit_each([wallet], HOT_FUNDS)
        return wallet

    async def register_users(self, run: str, count: int) -> list[str]:
        """Users to log in (each Register hashes a password at the service's cost)."""
        emails = [f"bench-{run}-{i}@example.com" for i in range(count)]
        await bounded((self._register(email) for email in emails), count)
        return emails

    async def _register(self, email: str) -> None:
        await next(self._auth).Register(
            auth_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="Bench"),
            timeout=CALL_TIMEOUT_SECONDS * 6,
        )

    async def share(self, wallets: list[str], hot: str, emails: list[str]) -> None:
        """Every process's wallets (transfers go to any), the hot one, the users to log in."""
        self.wallets, self.hot, self.emails = wallets, hot, emails

    # --- the scenarios: one call (or pair) each -------------------------------------------

    def _key(self) -> str:
        return f"bench-{self._run}-{self.index}-{next(self._keys)}"

    def _credit(self, wallet: str) -> Awaitable[Any]:
        return next(self._wallet).Credit(
            wallet_pb2.CreditRequest(wallet_id=wallet, amount=AMOUNT, idempotency_key=self._key()),
            metadata=self._as(self.payments),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    def _debit(self, wallet: str, owner: str) -> Awaitable[Any]:
        return next(self._wallet).Debit(
            wallet_pb2.DebitRequest(wallet_id=wallet, amount=1, idempotency_key=self._key()),
            metadata=self._as(owner),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    def _transfer(self, source: str, owner: str) -> Awaitable[Any]:
        destination = source
        while destination == source:
            destination = random.choice(self.wallets)
        return next(self._wallet).Transfer(
            wallet_pb2.TransferRequest(
                source_wallet_id=source,
                destination_wallet_id=destination,
                amount=1,
                idempotency_key=self._key(),
            ),
            metadata=self._as(owner),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    async def _hold_and_capture(self) -> None:
        wallet, owner = random.choice(self.own)
        stub = next(self._wallet)
        placed = await stub.CreateHold(
            wallet_pb2.CreateHoldRequest(wallet_id=wallet, amount=1, idempotency_key=self._key()),
            metadata=self._as(owner),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        await stub.CaptureHold(
            wallet_pb2.CaptureHoldRequest(
                hold_id=placed.hold.id, amount=1, idempotency_key=self._key()
            ),
            metadata=self._as(owner),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    def _get_wallet(self) -> Awaitable[Any]:
        wallet, owner = random.choice(self.own)
        return next(self._wallet).GetWallet(
            wallet_pb2.GetWalletRequest(wallet_id=wallet),
            metadata=self._as(owner),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    def _list_transactions(self) -> Awaitable[Any]:
        wallet, owner = random.choice(self.history)
        return next(self._wallet).ListTransactions(
            wallet_pb2.ListTransactionsRequest(wallet_id=wallet, page_size=PAGE_SIZE),
            metadata=self._as(owner),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    def _login(self) -> Awaitable[Any]:
        return next(self._auth).Login(
            auth_pb2.LoginRequest(email=random.choice(self.emails), password=PASSWORD),
            timeout=CALL_TIMEOUT_SECONDS,
        )

    def _call(self, scenario: str) -> Callable[[], Awaitable[Any]]:
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "credit-uniform": lambda: self._credit(random.choice(self.wallets)),
            "credit-hot": lambda: self._credit(self.hot),
            "debit-uniform": lambda: self._debit(*random.choice(self.own)),
            "debit-hot": lambda: self._debit(self.hot, self.hot_owner),
            "transfer-uniform": lambda: self._transfer(*random.choice(self.own)),
            "transfer-hot": lambda: self._transfer(self.hot, self.hot_owner),
            "hold-capture": self._hold_and_capture,
            "get-wallet": self._get_wallet,
            "list-transactions": self._list_transactions,
            "login": self._login,
        }
        return calls[scenario]

    # --- running one ---------------------------------------------------------------------

    async def run(self, window: Window) -> Measurement:
        """Closed loop: `in_flight` slots; what ended within the measured window counts."""
        call = self._call(window.scenario)
        begin = window.start + window.warmup
        end = begin + window.seconds
        latencies: list[float] = []
        errors: Counter[str] = Counter()

        async def slot() -> None:
            while (started := time.monotonic()) < end:
                failure = None
                try:
                    await call()
                except grpc.aio.AioRpcError as error:
                    failure = describe(error)
                ended = time.monotonic()
                if begin <= ended <= end:
                    if failure is None:
                        latencies.append(ended - started)
                    else:
                        errors[failure] += 1

        await asyncio.sleep(max(0.0, window.start - time.monotonic()))
        slots = [asyncio.create_task(slot()) for _ in range(window.in_flight)]
        await asyncio.sleep(max(0.0, begin - time.monotonic()))
        cpu_before = _cpu_seconds()
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        cpu_after = _cpu_seconds()
        await asyncio.gather(*slots)
        measured = Measurement(window.scenario, window.seconds, len(latencies), latencies)
        measured.errors = dict(errors)
        measured.in_flight = window.in_flight
        measured.client_cpu_seconds = cpu_after - cpu_before
        return measured


def _cpu_seconds() -> float:
    """This process's CPU time, every thread (grpc's too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _serve(pipe: Connection, index: int, auth: str, wallet: str, channels: int) -> None:
    asyncio.run(_serve_calls(pipe, index, auth, wallet, channels))


async def _serve_calls(pipe: Connection, index: int, auth: str, wallet: str, channels: int) -> None:
    """Runs the methods the bench asks for, one at a time, until told to stop (or orphaned)."""
    process = LoadProcess(index, auth, wallet, channels)  # its channels belong to this loop
    try:
        while True:
            try:
                method, args = await asyncio.to_thread(pipe.recv)
            except EOFError:
                return
            if method == "stop":
                return
            try:
                pipe.send(("ok", await getattr(process, method)(*args)))
            except Exception:
                pipe.send(("error", traceback.format_exc()))
    finally:
        await process.close()


class LoadClient:
    """The load processes, seen from the bench's process."""

    def __init__(self, count: int, auth: str, wallet: str, channels: int) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs grpc
        self._pipes: list[Connection] = []
        self._processes = []
        for index in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_serve, args=(theirs, index, auth, wallet, channels), daemon=True
            )
            process.start()
            self._pipes.append(ours)
            self._processes.append(process)

    @property
    def count(self) -> int:
        return len(self._pipes)

    async def each(self, method: str, arguments: list[tuple[Any, ...]]) -> list[Any]:
        """Calls `method` in every process at once, with its own arguments; their results."""
        for pipe, args in zip(self._pipes, arguments, strict=True):
            pipe.send((method, args))
        return await asyncio.gather(*(asyncio.to_thread(_answer, pipe) for pipe in self._pipes))

    async def all(self, method: str, *args: Any) -> list[Any]:
        return await self.each(method, [args] * self.count)

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):  # it ended already
                pipe.send(("stop", ()))
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.kill()


def _answer(pipe: Connection) -> Any:
    status, value = pipe.recv()
    if status == "error":
        raise RuntimeError(f"a load process failed:\n{value}")
    return value


def split(total: int, parts: int) -> list[int]:
    """`total` in `parts` nearly equal whole shares."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
