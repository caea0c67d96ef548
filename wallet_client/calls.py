"""One unary RPC as the client sends it: a deadline for each attempt, the access token, an
`x-request-id`, a typed exception, and retries with jittered exponential backoff within a
total time budget, always of the same request (so a money call keeps its idempotency key).

Which codes are retried depends on the call (`retry_on`):
- `UNKNOWN_OUTCOME` for calls that carry an idempotency key (and UpdateWalletStatus, which is
  idempotent by nature): UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED and CANCELLED may hide a
  success, and the same request with the same key answers the first outcome.
- `CONNECTION_LOST` (UNAVAILABLE only) for reads and other calls that are safe to repeat.
- `NEVER` for calls whose repetition would answer something misleading (Register,
  ChangePassword).
Nothing else is ever retried: INVALID_ARGUMENT, FAILED_PRECONDITION and the rest are answers.
"""

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from wallet_client.errors import TokenExpired, WalletError, from_rpc_error

log = logging.getLogger("wallet_client")

Code = grpc.StatusCode
UNKNOWN_OUTCOME = frozenset(
    {Code.UNAVAILABLE, Code.ABORTED, Code.DEADLINE_EXCEEDED, Code.CANCELLED}
)
CONNECTION_LOST = frozenset({Code.UNAVAILABLE})
NEVER: frozenset[grpc.StatusCode] = frozenset()

ResponseT = TypeVar("ResponseT")


@dataclass(frozen=True)
class RetryPolicy:
    """Deadlines and retries. Each attempt gets `attempt_timeout` seconds (the deadline the
    server sees, which also bounds its lock waits); retries wait a random time up to
    `initial_backoff * multiplier ** n`, at most `max_backoff` ("full jitter"); all attempts
    and waits of one call fit in `total_timeout`."""

    attempt_timeout: float = 10.0
    total_timeout: float = 30.0
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def backoff(self, retry: int) -> float:
        """How long to wait before retry number `retry` (from 0)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        return random.uniform(0, ceiling)


class TokenSource(Protocol):
    """Where authenticated calls get their access token (`wallet_client.session.Session`)."""

    async def access_token(self) -> str: ...

    async def renew_expired(self, stale_token: str) -> bool:
        """After UNAUTHENTICATED TOKEN_EXPIRED: True once a new token may be fetched."""
        ...


def new_idempotency_key() -> str:
    """A fresh idempotency key (a random UUID). Make it yourself and store it with the payment
    before the call if you want to be able to retry the payment after a crash."""
    return str(uuid.uuid4())


async def unary(
    stub: Any,
    rpc: str,
    request: Any,
    response_type: type[ResponseT],
    *,
    policy: RetryPolicy,
    retry_on: frozenset[grpc.StatusCode],
    tokens: TokenSource | None,
    idempotency_key: str | None = None,
) -> ResponseT:
    """Sends `request` to `stub`'s `rpc` until an answer that is not retried, or the budget
    ends; raises the typed exception of the last failure."""
    method = getattr(stub, rpc)
    request_id = str(uuid.uuid4())
    give_up_at = time.monotonic() + policy.total_timeout
    retries = 0
    renewed_token = False
    while True:
        token = await tokens.access_token() if tokens else None
        attempt_timeout = min(policy.attempt_timeout, give_up_at - time.monotonic())
        try:
            response = await method(
                request, timeout=max(attempt_timeout, 0.0), metadata=_metadata(token, request_id)
            )
            assert isinstance(response, response_type)
            return response
        except grpc.aio.AioRpcError as rpc_error:
            error = from_rpc_error(
                rpc_error, idempotency_key=idempotency_key, request_id=request_id
            )
            cause: grpc.aio.AioRpcError = rpc_error
        if isinstance(error, TokenExpired) and tokens and token and not renewed_token:
            renewed_token = True  # our clock said the token was fresh: renew it, once
            if await tokens.renew_expired(token):
                continue
        delay = policy.backoff(retries)
        if error.code not in retry_on or time.monotonic() + delay >= give_up_at:
            raise error from cause
        retries += 1
        _log_retry(rpc, error, retries, delay)
        await asyncio.sleep(delay)


def _metadata(token: str | None, request_id: str) -> tuple[tuple[str, str], ...]:
    # One request id for every attempt of a call, so the services' logs show its retries.
    if token is None:
        return (("x-request-id", request_id),)
    return (("x-request-id", request_id), ("authorization", f"Bearer {token}"))


def _log_retry(rpc: str, error: WalletError, retry: int, delay: float) -> None:
    log.warning(
        "retrying %s after %s (retry %d in %.2f s, idempotency key %s, request id %s)",
        rpc,
        error,
        retry,
        delay,
        error.idempotency_key,
        error.request_id,
    )
