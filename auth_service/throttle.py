"""Login throttling per account and per client address, in fixed windows.

Every attempt is counted before the password is checked (so that concurrent guesses
cannot slip past the limit) and taken back when it succeeds: only failures add up.
Over the limit, attempts are refused without a password check until the window ends.
Refused attempts do not move the window, so a lock-out always lifts. And the account limit
never shuts out an address the account logged in from successfully (within the trust
period): an attacker guessing from elsewhere cannot keep the owner out at all. The address
limit still applies to everyone.
"""

import asyncio
import hashlib
import ipaddress
import logging
import math
from dataclasses import dataclass
from typing import Any

import psycopg_pool

from auth_service import repository as repo
from auth_service.models import ThrottleCount
from auth_service.validation import MAX_EMAIL_LENGTH
from shared.errors import resource_exhausted

log = logging.getLogger(__name__)

ACCOUNT = "account"
ADDRESS = "address"


@dataclass(frozen=True)
class Attempt:
    counts: dict[tuple[str, str], ThrottleCount]

    def subject(self, kind: str) -> str:
        return next(subject for subject_kind, subject in self.counts if subject_kind == kind)


class LoginThrottle:
    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        *,
        window_seconds: int,
        max_failures_per_account: int,
        max_failures_per_address: int,
        trusted_address_days: int,
    ) -> None:
        self._pool = pool
        self._window = window_seconds
        self._trust_seconds = trusted_address_days * 86400
        self._limits = {ACCOUNT: max_failures_per_account, ADDRESS: max_failures_per_address}

    async def attempt(self, account: str, address: str, *, trust_known_address: bool) -> Attempt:
        """Counts an attempt; RESOURCE_EXHAUSTED TOO_MANY_ATTEMPTS when over a limit.

        `trust_known_address` lets the account's usual addresses past the account limit (a
        login); a password check behind an access token (ChangePassword) gets no such pass,
        so a stolen token cannot be used to guess the password without limit."""
        subjects = [(ACCOUNT, account), (ADDRESS, address)]
        async with self._pool.connection() as conn:
            counts = {
                subject: await repo.count_login_attempt(conn, *subject, self._window)
                for subject in subjects
            }
            over = {
                kind: count
                for (kind, _), count in counts.items()
                if count.attempts > self._limits[kind]
            }
            if (
                trust_known_address
                and set(over) == {ACCOUNT}
                and await repo.is_trusted_address(conn, account, address, self._trust_seconds)
            ):
                over = {}  # the owner's usual address: the account limit does not shut it out
        if over:
            retry_after = math.ceil(max(count.retry_after_seconds for count in over.values()))
            raise resource_exhausted(
                "TOO_MANY_ATTEMPTS",
                f"too many failed attempts; retry in {retry_after} s",
                retry_after_seconds=retry_after,
            )
        return Attempt(counts)

    async def succeeded(self, attempt: Attempt) -> None:
        async with self._pool.connection() as conn:
            for (kind, subject), count in attempt.counts.items():
                await repo.forgive_login_attempt(conn, kind, subject, count)
            await repo.remember_trusted_address(
                conn, attempt.subject(ACCOUNT), attempt.subject(ADDRESS)
            )

    async def delete_ended_windows_periodically(self) -> None:
        """Keeps the table small; counts in ended windows no longer matter."""
        while True:
            await asyncio.sleep(max(self._window, 60))
            try:
                async with self._pool.connection() as conn:
                    await repo.delete_ended_throttle_windows(conn, self._window)
                    await repo.delete_expired_trusted_addresses(conn, self._trust_seconds)
            except Exception:
                log.exception("deleting ended login throttle windows failed; will try again")


def account_key(email: str) -> str:
    """The throttling key of a (normalised) email; an absurdly long one is hashed so that
    made-up megabyte emails cannot bloat the table."""
    if len(email) <= MAX_EMAIL_LENGTH:
        return email
    return "sha256:" + hashlib.sha256(email.encode()).hexdigest()


def client_address(peer: str) -> str:
    """The throttling key of a gRPC peer such as `ipv4:10.0.0.7:51234` or `ipv6:[::1]:5123`.

    IPv6 clients are grouped by /64, the block a single host usually controls.
    """
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer  # unix sockets and the like: one key each
    host = rest.rsplit(":", 1)[0].strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
