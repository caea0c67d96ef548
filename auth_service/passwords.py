"""Password policy and hashing.

bcrypt reads at most 72 bytes, so every password is first reduced to the base64 of its
SHA-256 (44 bytes, no NUL): all of a long password counts, nothing is truncated.

All of it (the NFKC normalisation, which can grow a text 18-fold, SHA-256 and bcrypt) runs in a
small pool of worker threads, one per core (bcrypt releases the GIL), behind a bounded queue:
the event loop keeps serving, and when the queue is full a call is refused at once with
RESOURCE_EXHAUSTED `SERVER_BUSY` rather than left waiting. Lengths are checked before any of it.
"""

import asyncio
import base64
import hashlib
import os
import secrets
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import bcrypt

from shared.errors import invalid_argument, resource_exhausted

MIN_LENGTH = 8
MAX_LENGTH = 1024
Result = TypeVar("Result")


def check_policy(password: str) -> None:
    """A new password: length rules only, as NIST SP 800-63B advises (no composition rules)."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise invalid_argument(
            "WEAK_PASSWORD",
            f"password must have {MIN_LENGTH} to {MAX_LENGTH} characters",
            min_length=MIN_LENGTH,
            max_length=MAX_LENGTH,
        )


def check_presented(password: str) -> None:
    """A password presented to be checked (Login, ChangePassword's current one): longer than any
    password can be, it is refused before any work is spent on it."""
    if len(password) > MAX_LENGTH:
        raise invalid_argument(
            "PASSWORD_TOO_LONG",
            f"a password has at most {MAX_LENGTH} characters",
            max_length=MAX_LENGTH,
        )


def _prehash(password: str) -> bytes:
    # NFKC, so that the same password typed on another keyboard still matches.
    normalised = unicodedata.normalize("NFKC", password).encode()
    return base64.b64encode(hashlib.sha256(normalised).digest())


def _hash(password: str, cost: int) -> str:
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(cost)).decode()


def _verify(password: str, password_hash: bytes, padding_hash: bytes | None) -> bool:
    """Whether `password` matches; a failure also checks `padding_hash`, if given, so that it
    takes as long as a check at the configured cost."""
    candidate = _prehash(password)
    if bcrypt.checkpw(candidate, password_hash):
        return True
    if padding_hash is not None:
        bcrypt.checkpw(candidate, padding_hash)
    return False


def cost_of(password_hash: str | bytes) -> int:
    text = password_hash.decode() if isinstance(password_hash, bytes) else password_hash
    return int(text.split("$")[2])


class CpuQueue:
    """Runs CPU-heavy functions on `workers` threads; at most `queue_size` more wait for one.

    Beyond that a call is refused with RESOURCE_EXHAUSTED `SERVER_BUSY` (retry shortly)."""

    def __init__(self, workers: int, queue_size: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="password")
        self._capacity = workers + queue_size
        self._pending = 0

    async def run(self, function: Callable[..., Result], *args: object) -> Result:
        if self._pending >= self._capacity:
            raise resource_exhausted(
                "SERVER_BUSY", "too many password checks under way; retry shortly"
            )
        self._pending += 1
        try:
            # A cancelled call leaves the queue too (a job not yet started is dropped).
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        finally:
            self._pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class PasswordHasher:
    def __init__(self, cost: int, *, workers: int | None = None, queue_size: int = 16) -> None:
        self.cost = cost
        self.queue = CpuQueue(workers or os.cpu_count() or 1, queue_size)
        # Checked against when the email is unknown, and to pad the check of a hash of a
        # lower cost, so that such a failure takes as long as a real one.
        self._dummy_hash = _hash(secrets.token_urlsafe(), cost).encode()

    async def hash(self, password: str) -> str:
        return await self.queue.run(_hash, password, self.cost)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Whether `password` matches; with no hash (unknown user), as slow, and False.

        A hash made at a lower cost than the configured one (BCRYPT_COST was raised since)
        would answer a wrong password faster, telling that the account exists: the failure is
        padded with a check at the configured cost."""
        if password_hash is None:
            await self.queue.run(_verify, password, self._dummy_hash, None)
            return False
        padding = self._dummy_hash if cost_of(password_hash) < self.cost else None
        return await self.queue.run(_verify, password, password_hash.encode(), padding)

    def needs_rehash(self, password_hash: str) -> bool:
        """True for a hash made with another cost (the setting changed since)."""
        return cost_of(password_hash) != self.cost

    def close(self) -> None:
        self.queue.close()
