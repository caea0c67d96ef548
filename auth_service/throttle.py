"""Throttling of password guesses and registrations, in fixed windows shared by every instance.

Login: every attempt is counted before the password is checked (so that concurrent guesses
cannot slip past the limit) and taken back when it succeeds: only failures add up. Over a
limit, attempts are refused without a password check until the window ends; refused attempts
do not move the window, so a lock-out always lifts. The account limit does not shut out an
address the account logged in from successfully (within the trust period), so an attacker
guessing from elsewhere cannot keep the owner out; guesses from such an address still have a
budget of their own per account (`max_failures_per_trusted_address`), so the pass is no way
around the limit. The address limit applies to everyone.

Registration: every attempt counts, per client address and in total: each costs a bcrypt hash,
and `EMAIL_TAKEN` tells whether an address is registered, so probing is limited too.
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
from auth_service.repository import Conn
from auth_service.validation import MAX_EMAIL_LENGTH
from shared.errors import resource_exhausted

log = logging.getLogger(__name__)

ACCOUNT = "account"
ADDRESS = "address"
TRUSTED_ADDRESS = "account_address"  # one account's guesses from one of its trusted addresses
REGISTER_ADDRESS = "register_address"
REGISTER_TOTAL = "register_total"

Subject = tuple[str, str]  # (kind, subject)


@dataclass(frozen=True)
class Attempt:
    counts: dict[Subject, ThrottleCount]

    def subject(self, kind: str) -> str:
        return next(subject for subject_kind, subject in self.counts if subject_kind == kind)


async def _count(conn: Conn, subjects: list[Subject], window: int) -> dict[Subject, ThrottleCount]:
    return {subject: await repo.count_login_attempt(conn, *subject, window) for subject in subjects}


def _refuse(over: list[ThrottleCount], what: str) -> None:
    """RESOURCE_EXHAUSTED TOO_MANY_ATTEMPTS if any count is over its limit."""
    if over:
        retry_after = math.ceil(max(count.retry_after_seconds for count in over))
        raise resource_exhausted(
            "TOO_MANY_ATTEMPTS",
            f"too many {what}; retry in {retry_after} s",
            retry_after_seconds=retry_after,
        )


class LoginThrottle:
    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        *,
        window_seconds: int,
        max_failures_per_account: int,
        max_failures_per_address: int,
        max_failures_per_trusted_address: int,
        trusted_address_days: int,
    ) -> None:
        self._pool = pool
        self._window = window_seconds
        self._trust_seconds = trusted_address_days * 86400
        self._limits = {
            ACCOUNT: max_failures_per_account,
            ADDRESS: max_failures_per_address,
            TRUSTED_ADDRESS: max_failures_per_trusted_address,
        }

    async def attempt(self, account: str, address: str, *, trust_known_address: bool) -> Attempt:
        """Counts an attempt; RESOURCE_EXHAUSTED TOO_MANY_ATTEMPTS when over a limit.

        `trust_known_address` lets the account's usual addresses past the account limit (a
        login), within their own budget; a password check behind an access token
        (ChangePassword) gets no such pass, so a stolen token gives no extra guesses."""
        subjects = [(ACCOUNT, account), (ADDRESS, address)]
        if trust_known_address:
            subjects.append((TRUSTED_ADDRESS, f"{account} {address}"))
        async with self._pool.connection() as conn:
            counts = await _count(conn, subjects, self._window)
            over = {
                kind for (kind, _), count in counts.items() if count.attempts > self._limits[kind]
            }
            if (
                trust_known_address
                and ACCOUNT in over
                and await repo.is_trusted_address(conn, account, address, self._trust_seconds)
            ):
                over.discard(ACCOUNT)  # the owner's usual address: judged by its own budget
            else:
                over.discard(TRUSTED_ADDRESS)  # that budget only matters past the account limit
        _refuse([count for (kind, _), count in counts.items() if kind in over], "failed attempts")
        return Attempt(counts)

    async def succeeded(self, attempt: Attempt) -> None:
        async with self._pool.connection() as conn:
            for (kind, subject), count in attempt.counts.items():
                await repo.forgive_login_attempt(conn, kind, subject, count)
            await repo.remember_trusted_address(
                conn, attempt.subject(ACCOUNT), attempt.subject(ADDRESS)
            )


class RegistrationThrottle:
    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        *,
        window_seconds: int,
        max_per_address: int,
        max_total: int,
    ) -> None:
        self._pool = pool
        self._window = window_seconds
        self._limits = {REGISTER_ADDRESS: max_per_address, REGISTER_TOTAL: max_total}

    async def attempt(self, address: str) -> None:
        """Counts a registration attempt; RESOURCE_EXHAUSTED TOO_MANY_ATTEMPTS when over a limit.

        Refused attempts count too: a client that keeps knocking stays shut out."""
        subjects = [(REGISTER_ADDRESS, address), (REGISTER_TOTAL, "all")]
        async with self._pool.connection() as conn:
            counts = await _count(conn, subjects, self._window)
        over = [count for (kind, _), count in counts.items() if count.attempts > self._limits[kind]]
        _refuse(over, "registrations")


async def delete_ended_windows_periodically(
    pool: psycopg_pool.AsyncConnectionPool[Any], window_seconds: int, trust_days: int
) -> None:
    """Keeps the throttle tables small: counts in ended windows no longer matter.
    `window_seconds` is the longest window in use."""
    while True:
        await asyncio.sleep(max(window_seconds, 60))
        try:
            async with pool.connection() as conn:
                await repo.delete_ended_throttle_windows(conn, window_seconds)
                await repo.delete_expired_trusted_addresses(conn, trust_days * 86400)
        except Exception:
            log.exception("deleting ended throttle windows failed; will try again")


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
