"""WatchEvents as an async iterator that resumes by itself.

The stream is opened after the cursor of the last event handed out; when it breaks (the
server restarts, a balancer drops it, the network blips) it is opened again from that cursor,
with jittered backoff, so the caller sees every event once and in order. Heartbeats are
skipped. It gives up, raising the last error, only when no message has arrived for
`max_outage` seconds (None: never), or on an answer that a retry cannot change (a cursor the
server does not accept, a permission); `cursor` then says where to start again.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import grpc

from shared.gen.wallet.v1 import wallet_pb2
from wallet_client.calls import UNKNOWN_OUTCOME, RetryPolicy, TokenSource
from wallet_client.errors import TokenExpired, Unavailable, WalletError, from_rpc_error

log = logging.getLogger("wallet_client")


class EventStream:
    """`async for event in client.watch_events(...)`: `wallet_pb2.WalletEvent`s, for ever."""

    def __init__(
        self,
        stub: Any,
        tokens: TokenSource,
        policy: RetryPolicy,
        *,
        after_cursor: str,
        wallet_id: str,
        max_outage: float | None,
    ) -> None:
        self._stub = stub
        self._tokens = tokens
        self._policy = policy
        self._wallet_id = wallet_id
        self._max_outage = max_outage
        # The cursor of the last event handed out (or the one the stream started after):
        # resume from it, here or in a new stream.
        self.cursor = after_cursor
        self.reconnects = 0
        self._events = self._follow()

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> wallet_pb2.WalletEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        """Ends the stream (also done by leaving an `async with` block around it)."""
        await self._events.aclose()

    async def __aenter__(self) -> "EventStream":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _follow(self) -> AsyncGenerator[wallet_pb2.WalletEvent]:
        failures = 0
        last_progress = time.monotonic()
        renewed_token = False
        while True:
            token = None
            try:
                token = await self._tokens.access_token()
                async with contextlib.aclosing(self._stream(token)) as messages:
                    async for message in messages:
                        failures, last_progress, renewed_token = 0, time.monotonic(), False
                        if message.HasField("event"):
                            self.cursor = message.event.cursor
                            yield message.event
                        elif message.heartbeat.cursor:  # no gap, even before a first event
                            self.cursor = message.heartbeat.cursor
                error: WalletError | None = None  # the server ended the stream: open it again
            except WalletError as caught:  # the stream's, or a token that cannot be renewed yet
                error = caught
            if isinstance(error, TokenExpired) and token and not renewed_token:
                renewed_token = True
                if await self._tokens.renew_expired(token):
                    continue
            if error is not None and not _resumable(error):
                raise error
            delay = self._policy.backoff(failures)
            if self._max_outage is not None and (
                time.monotonic() + delay - last_progress > self._max_outage
            ):
                raise error or Unavailable("WatchEvents keeps ending without a message")
            failures += 1
            self.reconnects += 1
            log.warning("WatchEvents resumes in %.2f s after %s", delay, error or "its end")
            await asyncio.sleep(delay)

    async def _stream(self, token: str) -> AsyncGenerator[wallet_pb2.WatchEventsResponse]:
        """One WatchEvents call from the current cursor; its failure as a typed error."""
        call = self._stub.WatchEvents(
            wallet_pb2.WatchEventsRequest(after_cursor=self.cursor, wallet_id=self._wallet_id),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as rpc_error:
            raise from_rpc_error(rpc_error) from rpc_error
        finally:
            call.cancel()


def _resumable(error: WalletError) -> bool:
    """Errors that a new stream from the same cursor may not meet: the unknown-outcome codes,
    and what a broken connection or a proxy gives (a status without any ErrorInfo)."""
    return error.code in UNKNOWN_OUTCOME or (
        not error.reason and error.code in {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
    )
