"""A bank workload: many clients move money with short deadlines, retry every unclear answer with
the same idempotency key, and at the end (and in snapshots on the way) the books must balance.

    bank = await Bank.open(BankConfig(), auth_address, [wallet_address], database_url)
    await bank.load(seconds=10)       # clients run; a fault injector may run meanwhile
    await bank.settle(seconds=30)     # operations still unclear are retried, faults stopped
    report = await bank.check()       # report.passed, print(report.summary())

Set-up: `wallets` users with one wallet each (one currency), a `wallet:credit` service account
that funds every wallet. Then `clients` concurrent clients each loop: pick a transfer between
random wallets (by the source's owner), a debit (by the owner) or a credit (by the service), send
it with a deadline of 20-300 ms, and until a definite answer retry it with the same key and the
exact same request, with backoff, alternating between the wallet instances given. Definite:
OK (applied) or FAILED_PRECONDITION INSUFFICIENT_FUNDS (refused). Unknown: UNAVAILABLE,
ABORTED, DEADLINE_EXCEEDED, CANCELLED (the money may or may not have moved). Operations still
unknown after `settle` are reported and widen the bounds of the conserved total.

Checks (see `Bank.check`): conserved total within the bounds unknown operations allow (at the
end and in every snapshot), no negative balance, balance == sum of ledger == newest
balance_after, each ledger entry's balance_after follows from the previous one, gapless
per-wallet sequences, `wallet_service.admin.check_invariants`, every acknowledged key applied
exactly once with the amount, wallets, transaction id and balances it was answered with, every
refused key applied zero times and its refusal justified by the ledger, no key applied twice, no
movement on the bank's wallets that no client asked for, and no answer outside the contract.
"""

import asyncio
import collections
import contextlib
import dataclasses
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import jwt
import psycopg
from psycopg import conninfo
from psycopg.rows import dict_row

from auth_service.admin import create_service_account
from shared.errors import error_info
from shared.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from wallet_service.admin import check_invariants

Code = grpc.StatusCode
# The outcome may be unknown: retry with the same key and the same request.
UNKNOWN_OUTCOME = {
    Code.UNAVAILABLE,
    Code.ABORTED,
    Code.DEADLINE_EXCEEDED,
    Code.CANCELLED,
}
REFUSED = "FAILED_PRECONDITION INSUFFICIENT_FUNDS"
# Transport failures: the call never reached a server; the call lost its connection in flight.
NOT_CONNECTED = "UNAVAILABLE (not connected)"
CUT = "UNAVAILABLE (connection lost)"
# Client settings a payments client should use: reconnect quickly once a server is back.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
CHECKER = "bank-checks"  # application_name of the checks' connections (fault injectors spare it)
PASSWORD = "bank workload password"


@dataclass(frozen=True)
class BankConfig:
    wallets: int = 8
    clients: int = 24
    currency: str = "EUR"
    initial_balance: int = 5_000
    max_amount: int = 2_000
    # Share of each kind of operation (the rest are transfers).
    debit_share: float = 0.25
    credit_share: float = 0.25
    # Deadline of each attempt while loading, in seconds; and while settling.
    deadline_range: tuple[float, float] = (0.02, 0.3)
    settle_deadline: float = 2.0
    # Share of attempts the client cancels itself, after a delay in this range (seconds).
    cancel_share: float = 0.0
    cancel_after_range: tuple[float, float] = (0.001, 0.02)
    snapshot_interval: float = 2.0
    seed: int | None = None


# --- identities ------------------------------------------------------------------------------


class Identity:
    """A caller with an access token that it renews before it expires (or when refused)."""

    def __init__(self, auth: auth_pb2_grpc.AuthServiceStub) -> None:
        self._auth = auth
        self._token = ""
        self._expires = 0.0
        self._lifetime = 0.0
        self._lock = asyncio.Lock()
        self.subject = ""
        self.renewals = 0

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        """The authorization header, with a token renewed ahead of its expiry."""
        if time.time() > self._expires - min(60.0, self._lifetime / 4):
            try:
                await self.renew(self._token)
            except grpc.aio.AioRpcError:
                if time.time() > self._expires:
                    raise  # no valid token left: this attempt cannot be made
        return (("authorization", f"Bearer {self._token}"),)

    async def renew(self, stale_token: str) -> None:
        """A new access token, unless another task already replaced `stale_token`."""
        async with self._lock:
            if self._token and self._token != stale_token:
                return
            token = await self._new_token()
            claims = jwt.decode(token, options={"verify_signature": False})
            self._token, self.subject = token, claims["sub"]
            self._expires, self._lifetime = claims["exp"], claims["exp"] - claims["iat"]
            self.renewals += 1

    async def _new_token(self) -> str:
        raise NotImplementedError


class User(Identity):
    """A user: renews with its refresh token, or logs in again if that fails (a refresh whose
    answer was lost spends the token, and presenting it again revokes the session)."""

    def __init__(self, auth: auth_pb2_grpc.AuthServiceStub, email: str) -> None:
        super().__init__(auth)
        self.email = email
        self._refresh_token = ""

    async def _new_token(self) -> str:
        if self._refresh_token:
            with contextlib.suppress(grpc.aio.AioRpcError):
                refreshed = await self._auth.RefreshToken(
                    auth_pb2.RefreshTokenRequest(refresh_token=self._refresh_token), timeout=5
                )
                return self._keep(refreshed.tokens)
        logged_in = await self._auth.Login(
            auth_pb2.LoginRequest(email=self.email, password=PASSWORD), timeout=10
        )
        return self._keep(logged_in.tokens)

    def _keep(self, tokens: auth_pb2.TokenPair) -> str:
        self._refresh_token = tokens.refresh_token
        return tokens.access_token


class Service(Identity):
    """A service account: asks for a new token with its credentials."""

    def __init__(self, auth: auth_pb2_grpc.AuthServiceStub, client_id: str, secret: str):
        super().__init__(auth)
        self._credentials = auth_pb2.IssueServiceTokenRequest(
            client_id=client_id, client_secret=secret
        )

    async def _new_token(self) -> str:
        issued = await self._auth.IssueServiceToken(self._credentials, timeout=10)
        return issued.access_token


# --- operations ------------------------------------------------------------------------------


@dataclass
class Operation:
    """One money movement as the client saw it, across all its attempts."""

    kind: str  # credit, debit or transfer
    caller: Identity
    key: str
    amount: int
    source: str | None
    destination: str | None
    request: Any
    started: float = 0.0  # wall clock of the first attempt
    answered: float | None = None  # wall clock of the definite answer
    attempts: list[str] = field(default_factory=list)  # "OK", "DEADLINE_EXCEEDED", ...
    outcome: str = "pending"  # pending (not yet definite), applied or refused
    transaction_id: str = ""
    balances_after: dict[str, int] = field(default_factory=dict)

    @property
    def rpc(self) -> str:
        return self.kind.capitalize()

    @property
    def money_in(self) -> int:
        """What the operation adds to the bank's total if applied (transfers add nothing)."""
        return {"credit": self.amount, "debit": -self.amount}.get(self.kind, 0)


def _answer(error: grpc.aio.AioRpcError) -> str:
    """The code and ErrorInfo reason; for a transport failure (no ErrorInfo), UNAVAILABLE says
    whether the call never reached a server or lost its connection on the way."""
    info = error_info(error)
    if info:
        return f"{error.code().name} {info.reason}"
    if error.code() == Code.UNAVAILABLE:
        return NOT_CONNECTED if "failed to connect" in (error.details() or "") else CUT
    return error.code().name


def _balances(op: Operation, response: Any) -> dict[str, int]:
    """The balances after that the answer disclosed (a crediting service is not told a user's
    balance: 0, which no balance after a credit can be; nor a user another user's)."""
    if op.kind == "credit":
        return {str(op.destination): response.balance_after} if response.balance_after else {}
    if op.kind == "debit":
        return {str(op.source): response.balance_after}
    balances = {str(op.source): response.source_balance_after}
    if response.HasField("destination_balance_after"):
        balances[str(op.destination)] = response.destination_balance_after
    return balances


# --- checks ----------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class Snapshot:
    """The bank's wallets read in one REPEATABLE READ transaction during the load."""

    before: float  # wall clock before the transaction's snapshot was taken
    after: float  # wall clock after it was taken
    total: int
    problems: list[str]


@dataclass
class BankReport:
    operations: list[Operation]
    checks: list[Check]
    snapshots: int
    snapshots_skipped: int

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def summary(self) -> str:
        operations = self.operations
        kinds = collections.Counter(op.kind for op in operations)
        outcomes = collections.Counter(op.outcome for op in operations)
        answers = collections.Counter(answer for op in operations for answer in op.attempts)
        lines = [
            f"calls: {len(operations)} operations ({_counts(kinds)}),"
            f" {sum(answers.values())} attempts",
            f"answers: {_counts(answers)}",
            f"outcomes: {_counts(outcomes)}",
            f"snapshots: {self.snapshots} checked, {self.snapshots_skipped} skipped"
            " (database unreachable)",
            f"checks: {len(self.checks) - len(self.failed)} passed, {len(self.failed)} failed",
        ]
        for check in self.checks:
            status = "pass" if check.passed else "FAIL"
            lines.append(f"  {status} {check.name}{': ' + check.detail if check.detail else ''}")
        for op in [op for op in operations if op.outcome == "pending"][:3]:
            answers = collections.Counter(op.attempts[-20:])
            lines.append(f"  unknown {op.key} ({op.kind}): last answers {_counts(answers)}")
        return "\n".join(lines)


def _counts(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.most_common())


def _sample(problems: list[str], most: int = 5) -> str:
    more = f" (+{len(problems) - most} more)" if len(problems) > most else ""
    return "; ".join(problems[:most]) + more


# The bank's wallets with their ledger, read in one statement (so in one snapshot).
WALLET_STATE = """
SELECT w.id::text AS id, w.balance, w.last_sequence,
       coalesce(sum(e.amount), 0) AS ledger_sum,
       count(e.sequence) AS entries,
       coalesce(min(e.sequence), 0) AS first_sequence,
       coalesce(max(e.sequence), 0) AS last_entry_sequence,
       count(DISTINCT e.sequence) AS distinct_sequences,
       (SELECT balance_after FROM wallet.ledger_entries n WHERE n.wallet_id = w.id
        ORDER BY n.sequence DESC LIMIT 1) AS newest_balance_after
FROM wallet.wallets w LEFT JOIN wallet.ledger_entries e ON e.wallet_id = w.id
WHERE w.id = ANY(%(wallets)s::uuid[])
GROUP BY w.id, w.balance, w.last_sequence
"""
DUPLICATED_KEYS = """
SELECT requested_by, idempotency_key, count(*) AS applied FROM wallet.transactions
WHERE requested_by = ANY(%(callers)s) GROUP BY 1, 2 HAVING count(*) > 1
"""
TRANSACTIONS = """
SELECT id::text, type, amount, source_wallet_id::text AS source,
       destination_wallet_id::text AS destination, idempotency_key, requested_by
FROM wallet.transactions
WHERE source_wallet_id = ANY(%(wallets)s::uuid[]) OR destination_wallet_id = ANY(%(wallets)s::uuid[])
   OR requested_by = ANY(%(callers)s)
"""
ENTRIES = """
SELECT wallet_id::text, sequence, transaction_id::text, amount, balance_after,
       extract(epoch FROM created_at)::float AS created_at
FROM wallet.ledger_entries WHERE wallet_id = ANY(%(wallets)s::uuid[])
ORDER BY wallet_id, sequence
"""


async def _rows(conn: psycopg.AsyncConnection[Any], query: str, params: Any) -> list[dict]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, params)
        return await cursor.fetchall()


# --- the bank --------------------------------------------------------------------------------


class Bank:
    def __init__(
        self,
        config: BankConfig,
        auth: auth_pb2_grpc.AuthServiceStub,
        wallet_stubs: list[wallet_pb2_grpc.WalletServiceStub],
        database_url: str,
        channels: list[grpc.aio.Channel],
    ) -> None:
        self.config = config
        self.database_url = database_url
        self._checker_url = conninfo.make_conninfo(database_url, application_name=CHECKER)
        self._auth = auth
        self._stubs = wallet_stubs
        self._channels = channels
        self._rng = random.Random(config.seed)
        self._run = uuid.uuid4().hex[:8]
        self._next_stub = 0
        self.users: list[User] = []
        self.service: Service | None = None
        self.wallets: list[str] = []
        self.owner: dict[str, User] = {}
        self.operations: list[Operation] = []
        self.snapshots: list[Snapshot] = []
        self.snapshots_skipped = 0
        self.cancels = 0  # calls this client cancelled (cancel_share)

    # --- set-up ----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        config: BankConfig,
        auth_address: str,
        wallet_addresses: list[str],
        database_url: str,
    ) -> "Bank":
        """Registers the users and the service account, opens and funds the wallets."""
        auth_channel = grpc.aio.insecure_channel(auth_address, options=CHANNEL_OPTIONS)
        wallet_channels = [
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            for address in wallet_addresses
        ]
        bank = cls(
            config,
            auth_pb2_grpc.AuthServiceStub(auth_channel),
            [wallet_pb2_grpc.WalletServiceStub(channel) for channel in wallet_channels],
            database_url,
            [auth_channel, *wallet_channels],
        )
        await bank._set_up()
        return bank

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def _set_up(self) -> None:
        client_id, secret = await create_service_account(
            self.database_url, f"bank-{self._run}", ["wallet:credit"]
        )
        self.service = Service(self._auth, client_id, secret)
        await self.service.renew("")
        self.users = await asyncio.gather(*(self._new_user(n) for n in range(self.config.wallets)))
        for user in self.users:
            response = await self._stubs[0].CreateWallet(
                wallet_pb2.CreateWalletRequest(currency=self.config.currency),
                metadata=await user.metadata(),
                timeout=10,
            )
            self.wallets.append(response.wallet.id)
            self.owner[response.wallet.id] = user
        funding = [
            self._operation("credit", self.service, self.config.initial_balance, None, wallet)
            for wallet in self.wallets
        ]
        await asyncio.gather(*(self._drive(op, time.time() + 60, settling=True) for op in funding))
        if any(op.outcome != "applied" for op in funding):
            raise RuntimeError(f"funding failed: {[op.attempts for op in funding]}")

    async def _new_user(self, number: int) -> User:
        email = f"bank-{self._run}-{number}@example.com"
        await self._auth.Register(
            auth_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="Bank"),
            timeout=10,
        )
        user = User(self._auth, email)
        await user.renew("")
        return user

    # --- load ------------------------------------------------------------------------------

    async def load(self, seconds: float) -> None:
        """`clients` clients move money for `seconds`, with snapshot checks meanwhile. An
        operation still unclear at the end stays pending, for `settle`."""
        stop = time.time() + seconds
        snapshots = asyncio.create_task(self._take_snapshots(stop))
        try:
            await asyncio.gather(*(self._client(stop) for _ in range(self.config.clients)))
        finally:
            snapshots.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await snapshots

    async def settle(self, seconds: float) -> None:
        """Retries every pending operation (same key, same request, longer deadlines) for at
        most `seconds`; what stays pending is an unknown outcome."""
        until = time.time() + seconds
        pending = [op for op in self.operations if op.outcome == "pending"]
        await asyncio.gather(*(self._drive(op, until, settling=True) for op in pending))

    async def _client(self, stop: float) -> None:
        while time.time() < stop:
            await self._drive(self._random_operation(), stop)

    def _random_operation(self) -> Operation:
        rng, config = self._rng, self.config
        amount = rng.randint(1, config.max_amount)
        draw = rng.random()
        if draw < config.credit_share:
            assert self.service is not None
            return self._operation("credit", self.service, amount, None, rng.choice(self.wallets))
        source = rng.choice(self.wallets)
        if draw < config.credit_share + config.debit_share:
            return self._operation("debit", self.owner[source], amount, source, None)
        destination = rng.choice([wallet for wallet in self.wallets if wallet != source])
        return self._operation("transfer", self.owner[source], amount, source, destination)

    def _operation(
        self,
        kind: str,
        caller: Identity,
        amount: int,
        source: str | None,
        destination: str | None,
    ) -> Operation:
        key = f"bank-{self._run}-{len(self.operations)}"
        if kind == "credit":
            request: Any = wallet_pb2.CreditRequest(
                wallet_id=destination, amount=amount, idempotency_key=key, reference="bank"
            )
        elif kind == "debit":
            request = wallet_pb2.DebitRequest(
                wallet_id=source, amount=amount, idempotency_key=key, reference="bank"
            )
        else:
            request = wallet_pb2.TransferRequest(
                source_wallet_id=source,
                destination_wallet_id=destination,
                amount=amount,
                idempotency_key=key,
                reference="bank",
            )
        op = Operation(kind, caller, key, amount, source, destination, request)
        self.operations.append(op)
        return op

    async def _drive(self, op: Operation, until: float, settling: bool = False) -> None:
        """Attempts `op` until a definite answer or `until`, backing off between attempts."""
        op.started = op.started or time.time()
        failures = 0
        while op.outcome == "pending" and time.time() < until:
            if failures:
                await asyncio.sleep(self._rng.uniform(0, min(0.5, 0.01 * 2**failures)))
            deadline = (
                self.config.settle_deadline
                if settling
                else self._rng.uniform(*self.config.deadline_range)
            )
            deadline = min(deadline, max(0.01, until - time.time()))
            await self._attempt(op, deadline, cancel=not settling)
            failures += 1

    async def _attempt(self, op: Operation, deadline: float, cancel: bool) -> None:
        stub = self._stubs[self._next_stub % len(self._stubs)]
        self._next_stub += 1
        try:
            metadata = await op.caller.metadata()
        except grpc.aio.AioRpcError as error:  # the auth service is unreachable: try later
            op.attempts.append(f"auth {_answer(error)}")
            return
        call = getattr(stub, op.rpc)(op.request, metadata=metadata, timeout=deadline)
        timer = None
        if cancel and self._rng.random() < self.config.cancel_share:
            delay = self._rng.uniform(*self.config.cancel_after_range)
            timer = asyncio.get_running_loop().call_later(delay, self._cancel, call)
        try:
            response = await call
        except asyncio.CancelledError:
            if not call.cancelled() or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            op.attempts.append(Code.CANCELLED.name)
            return
        except grpc.aio.AioRpcError as error:
            answer = _answer(error)
            op.attempts.append(answer)
            if error.code() == Code.UNAUTHENTICATED:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await op.caller.renew(metadata[0][1].removeprefix("Bearer "))
            elif answer == REFUSED:
                op.outcome, op.answered = "refused", time.time()
            return
        finally:
            if timer is not None:
                timer.cancel()
        op.attempts.append("OK")
        op.outcome, op.answered = "applied", time.time()
        op.transaction_id = response.transaction.id
        op.balances_after = _balances(op, response)

    def _cancel(self, call: grpc.aio.Call) -> None:
        if call.cancel():  # False when the answer came first
            self.cancels += 1

    # --- snapshots -------------------------------------------------------------------------

    async def _take_snapshots(self, stop: float) -> None:
        while time.time() + self.config.snapshot_interval < stop:
            await asyncio.sleep(self.config.snapshot_interval)
            try:
                await self._snapshot()
            except psycopg.Error:
                self.snapshots_skipped += 1

    async def _snapshot(self) -> None:
        async with await self._connect() as conn, conn.transaction():
            before = time.time()
            wallets = await _rows(conn, WALLET_STATE, {"wallets": self.wallets})  # snapshot taken
            after = time.time()
            duplicates = await _rows(conn, DUPLICATED_KEYS, {"callers": self._callers()})
        problems = _wallet_problems(wallets) + [
            f"key {row['idempotency_key']} applied {row['applied']} times" for row in duplicates
        ]
        ok, report = await check_invariants(self._checker_url)
        if not ok:
            problems.append(f"check_invariants: {report}")
        total = sum(wallet["balance"] for wallet in wallets)
        self.snapshots.append(Snapshot(before, after, total, problems))

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(
            self._checker_url, connect_timeout=5, autocommit=True
        )
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        return conn

    def _callers(self) -> list[str]:
        return [user.subject for user in self.users] + [
            self.service.subject if self.service else ""
        ]

    # --- the checks ------------------------------------------------------------------------

    async def check(self) -> BankReport:
        """Every check, on one REPEATABLE READ snapshot of the database after the run."""
        async with await self._connect() as conn, conn.transaction():
            params = {"wallets": self.wallets, "callers": self._callers()}
            wallets = await _rows(conn, WALLET_STATE, params)
            transactions = await _rows(conn, TRANSACTIONS, params)
            entries = await _rows(conn, ENTRIES, params)
        invariants_ok, invariants = await check_invariants(self._checker_url)
        checks = [
            self._check_answers(),
            self._check_total(wallets),
            self._check_snapshot_totals(),
            _check_problems("snapshots: wallets, ledgers, keys", self._snapshot_problems()),
            _check_problems("balances not negative", _negative(wallets)),
            _check_problems("balance == ledger sum == newest balance_after", _drift(wallets)),
            _check_problems("each balance_after follows from the one before", _chain(entries)),
            _check_problems("sequences gapless per wallet, 1..last_sequence", _gaps(wallets)),
            Check("check_invariants", invariants_ok, "" if invariants_ok else str(invariants)),
            *self._check_keys(transactions, entries),
        ]
        return BankReport(self.operations, checks, len(self.snapshots), self.snapshots_skipped)

    def _check_answers(self) -> Check:
        """Every answer is OK, the refusal, an unknown-outcome code, or an expired token."""
        allowed = {"OK", REFUSED, "UNAUTHENTICATED TOKEN_EXPIRED"}
        unexpected = collections.Counter(
            answer
            for op in self.operations
            for answer in op.attempts
            if answer not in allowed
            and answer.split()[0] not in {code.name for code in UNKNOWN_OUTCOME}
            and not answer.startswith("auth ")
        )
        return Check("answers within the contract", not unexpected, _counts(unexpected))

    def _bounds(self, operations: Iterable[Operation]) -> tuple[int, int]:
        """The lowest and highest total the given operations may have produced: applied ones
        count, refused ones do not, unknown ones may or may not."""
        low = high = 0
        for op in operations:
            if op.outcome == "applied":
                low, high = low + op.money_in, high + op.money_in
            elif op.outcome == "pending":
                low, high = low + min(0, op.money_in), high + max(0, op.money_in)
        return low, high

    def _check_total(self, wallets: list[dict]) -> Check:
        total = sum(wallet["balance"] for wallet in wallets)
        low, high = self._bounds(self.operations)
        unknown = sum(op.outcome == "pending" for op in self.operations)
        detail = f"total {total}, expected {low}" + (f"..{high}" if high != low else "")
        detail += f" ({unknown} operations with unknown outcome)"
        return Check("conserved total", low <= total <= high, detail)

    def _check_snapshot_totals(self) -> Check:
        """In each snapshot: operations acknowledged before it are in it, operations started
        after it are not, the others (and unknown ones) may be."""
        problems = []
        for snapshot in self.snapshots:
            surely_in = [
                op for op in self.operations if op.answered and op.answered < snapshot.before
            ]
            maybe_in = [
                dataclasses.replace(op, outcome="pending")
                for op in self.operations
                if op.outcome != "refused"
                and op.started < snapshot.after
                and not (op.answered and op.answered < snapshot.before)
            ]
            low, high = self._bounds([*surely_in, *maybe_in])
            if not low <= snapshot.total <= high:
                problems.append(f"total {snapshot.total} outside {low}..{high}")
        return _check_problems(f"conserved total in {len(self.snapshots)} snapshots", problems)

    def _snapshot_problems(self) -> list[str]:
        return [problem for snapshot in self.snapshots for problem in snapshot.problems]

    def _check_keys(self, transactions: list[dict], entries: list[dict]) -> list[Check]:
        applied: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
        for row in transactions:
            applied[row["requested_by"], row["idempotency_key"]].append(row)
        balance_after = {(e["transaction_id"], e["wallet_id"]): e["balance_after"] for e in entries}
        ours = {(op.caller.subject, op.key): op for op in self.operations}
        once, refused, twice = [], [], []
        for (caller, key), rows in applied.items():
            if len(rows) > 1:
                twice.append(f"{key} applied {len(rows)} times")
            if (caller, key) not in ours:
                twice.append(f"transaction {rows[0]['id']} ({key}) was never asked for")
        for op in self.operations:
            rows = applied.get((op.caller.subject, op.key), [])
            if op.outcome == "applied":
                once += _acknowledged_problems(op, rows, balance_after)
            elif op.outcome == "refused" and rows:
                refused.append(f"{op.key} refused but applied {len(rows)} times")
        unknown = [op for op in self.operations if op.outcome == "pending"]
        resolved = sum(bool(applied.get((op.caller.subject, op.key))) for op in unknown)
        return [
            _check_problems("every acknowledged key applied exactly once, as answered", once),
            _check_problems("every refused key applied zero times", refused),
            _check_problems("no key applied twice, no movement nobody asked for", twice),
            _check_problems("every refusal justified by the ledger", self._unjustified(entries)),
            Check(  # once the faults stop, a healthy service answers every retry
                "every outcome known after settling (the services recovered)",
                not unknown,
                f"{len(unknown)} unknown: {resolved} applied, {len(unknown) - resolved} not"
                " (as the database says)",
            ),
        ]

    def _unjustified(self, entries: list[dict]) -> list[str]:
        """A refusal must have seen a balance below the amount: some balance the source wallet
        had between the first attempt and the answer (by the entries' times, with a margin for
        how long a transaction may take between its start time and its commit)."""
        margin = self.config.settle_deadline + 2.0
        history: dict[str, list[dict]] = collections.defaultdict(list)
        for entry in entries:
            history[entry["wallet_id"]].append(entry)
        problems = []
        for op in self.operations:
            if op.outcome != "refused" or op.source is None or op.answered is None:
                continue
            lines = history[op.source]
            possible = [0] if not lines or lines[0]["created_at"] > op.started - margin else []
            for line, following in zip(lines, [*lines[1:], None], strict=True):
                committed_in_time = line["created_at"] <= op.answered
                not_replaced_before = (
                    following is None or following["created_at"] + margin > op.started
                )
                if committed_in_time and not_replaced_before:
                    possible.append(line["balance_after"])
            if min(possible, default=0) >= op.amount:
                problems.append(
                    f"{op.key}: {op.amount} refused, balances then {min(possible)} or more"
                )
        return problems


def _check_problems(name: str, problems: list[str]) -> Check:
    return Check(name, not problems, _sample(problems) if problems else "")


def _negative(wallets: list[dict]) -> list[str]:
    return [f"{w['id']}: {w['balance']}" for w in wallets if w["balance"] < 0]


def _drift(wallets: list[dict]) -> list[str]:
    return [
        f"{w['id']}: balance {w['balance']}, ledger {w['ledger_sum']},"
        f" newest balance_after {w['newest_balance_after']}"
        for w in wallets
        if not w["balance"] == w["ledger_sum"] == (w["newest_balance_after"] or 0)
    ]


def _gaps(wallets: list[dict]) -> list[str]:
    problems = []
    for w in wallets:
        found = (w["first_sequence"], w["last_entry_sequence"], w["distinct_sequences"])
        expected = (min(1, w["entries"]), w["entries"], w["entries"])
        if found != expected or w["last_sequence"] != w["entries"]:
            problems.append(
                f"{w['id']}: {w['entries']} entries, sequences {found[0]}..{found[1]}"
                f" ({found[2]} distinct), last_sequence {w['last_sequence']}"
            )
    return problems


def _wallet_problems(wallets: list[dict]) -> list[str]:
    return _negative(wallets) + _drift(wallets) + _gaps(wallets)


def _chain(entries: list[dict]) -> list[str]:
    """Within a wallet, in ledger order, each balance_after is the previous one plus the change."""
    problems = []
    previous: dict[str, int] = {}
    for entry in entries:
        wallet = entry["wallet_id"]
        expected = previous.get(wallet, 0) + entry["amount"]
        if entry["balance_after"] != expected:
            problems.append(
                f"{wallet} at {entry['sequence']}: balance_after {entry['balance_after']},"
                f" expected {expected}"
            )
        previous[wallet] = entry["balance_after"]
    return problems


def _acknowledged_problems(
    op: Operation, rows: list[dict], balance_after: dict[tuple[str, str], int]
) -> list[str]:
    if len(rows) != 1:
        return [f"{op.key} acknowledged but applied {len(rows)} times"]
    row = rows[0]
    stored = (row["id"], row["type"], row["amount"], row["source"], row["destination"])
    answered = (op.transaction_id, op.kind, op.amount, op.source, op.destination)
    problems = [] if stored == answered else [f"{op.key}: ledger {stored}, answered {answered}"]
    for wallet, balance in op.balances_after.items():
        if balance_after.get((op.transaction_id, wallet)) != balance:
            problems.append(
                f"{op.key}: answered balance_after {balance} for {wallet}, ledger"
                f" {balance_after.get((op.transaction_id, wallet))}"
            )
    return problems
