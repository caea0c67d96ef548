"""Who the client calls as: an access token, kept fresh.

- A user (after Login): the access token is refreshed with the refresh token shortly before
  it expires, and once more when a service answers TOKEN_EXPIRED (a clock that runs slow).
  A refresh token is single use, and presenting a spent one revokes the whole session (reuse
  detection), so one refresh runs at a time and every caller that wanted one meanwhile takes
  its result.
- A service account: a new token is issued from the client id and secret (IssueServiceToken).
- A token given as is (`use_token`): used until the services refuse it.

A token that is due but still valid is renewed in the background while calls go on with it,
so a slow or absent auth service costs nothing until the token really expires; only then do
calls wait for the new one. When a token is due is judged from its own lifetime (`exp - iat`,
read from the JWT without checking it: only to know when to refresh) on this machine's
monotonic clock from when it arrived, so a wrong wall clock cannot make the client refresh on
every call.
"""

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
from typing import Any

from shared.gen.auth.v1 import auth_pb2
from wallet_client.calls import UNKNOWN_OUTCOME, RetryPolicy, unary
from wallet_client.errors import NotLoggedIn, OutcomeUnknown, Unauthenticated, WalletError

log = logging.getLogger("wallet_client")

# After a background renewal that could not get through, how long before the next one.
RETRY_RENEWAL_SECONDS = 1.0


class Session:
    def __init__(self, auth_stub: Any, policy: RetryPolicy, refresh_margin: float) -> None:
        self._auth = auth_stub
        self._policy = policy
        self._margin = refresh_margin
        self._lock = asyncio.Lock()
        self._access_token: str | None = None
        self._user_tokens: auth_pb2.TokenPair | None = None
        self._service_credentials: tuple[str, str] | None = None
        self._expires_at = math.inf  # time.monotonic()
        self._renew_at = math.inf
        self._background: asyncio.Task[None] | None = None
        self._ended_by: WalletError | None = None  # why a session ended on its own
        self._generation = 0  # a new one for every session started or ended

    # --- starting and ending ---------------------------------------------------------------

    def start_user(self, tokens: auth_pb2.TokenPair) -> None:
        self.end()
        self._user_tokens = auth_pb2.TokenPair()
        self._user_tokens.CopyFrom(tokens)
        self._adopt(tokens.access_token)

    async def start_service(
        self, client_id: str, client_secret: str
    ) -> auth_pb2.IssueServiceTokenResponse:
        response = await self._issue_service_token(client_id, client_secret)
        self.end()
        self._service_credentials = (client_id, client_secret)
        self._adopt(response.access_token)
        return response

    def start_static(self, access_token: str) -> None:
        self.end()
        self._adopt(access_token)

    def end(self, ended_by: WalletError | None = None) -> None:
        self._generation += 1
        self._access_token = None
        self._user_tokens = None
        self._service_credentials = None
        self._expires_at = self._renew_at = math.inf
        self._ended_by = ended_by

    async def close(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background

    @property
    def user_tokens(self) -> auth_pb2.TokenPair | None:
        """A copy of the user's current token pair (to save and restore with `start_user`)."""
        if self._user_tokens is None:
            return None
        tokens = auth_pb2.TokenPair()
        tokens.CopyFrom(self._user_tokens)
        return tokens

    # --- the token for a call --------------------------------------------------------------

    async def access_token(self) -> str:
        token = self._current()
        now = time.monotonic()
        if now >= self._expires_at:
            await self._renew(token)  # nothing valid to call with meanwhile
        elif now >= self._renew_at and (self._background is None or self._background.done()):
            self._background = asyncio.create_task(self._renew_in_background(token))
        return self._current()

    async def renew_expired(self, stale_token: str) -> bool:
        if self._user_tokens is None and self._service_credentials is None:
            return False  # a token given as is: nothing to renew it with
        await self._renew(stale_token)
        return True

    async def renew_now(self) -> None:
        await self._renew(self._current())

    def _current(self) -> str:
        if self._access_token is None:
            if self._ended_by is not None:
                raise NotLoggedIn(f"the session ended ({self._ended_by}); log in again")
            raise NotLoggedIn("log in first (login, login_service or use_token)")
        return self._access_token

    async def _renew_in_background(self, token: str) -> None:
        try:
            await self._renew(token)
        except OutcomeUnknown as error:
            self._renew_at = time.monotonic() + RETRY_RENEWAL_SECONDS
            log.warning("could not renew the access token yet (it is still valid): %s", error)
        except WalletError as error:
            log.warning("the session ended: %s", error)

    async def _renew(self, stale_token: str) -> None:
        async with self._lock:  # one renewal at a time: a refresh token works once
            if self._access_token != stale_token:
                return  # renewed (or ended) while this caller waited
            generation = self._generation
            user_tokens: auth_pb2.TokenPair | None = None
            try:
                if self._user_tokens is not None:
                    user_tokens = await self._refresh(self._user_tokens.refresh_token)
                    access_token = user_tokens.access_token
                elif self._service_credentials is not None:
                    issued = await self._issue_service_token(*self._service_credentials)
                    access_token = issued.access_token
                else:
                    return  # a token given as is
            except Unauthenticated as error:
                if generation == self._generation:
                    self.end(ended_by=error)  # refresh token spent, revoked, expired; bad secret
                raise
            if generation != self._generation:
                return  # logged out, or in as someone else, while this renewal ran
            self._user_tokens = user_tokens
            self._adopt(access_token)

    async def _refresh(self, refresh_token: str) -> auth_pb2.TokenPair:
        # Retried on every unknown outcome: if a lost answer had already rotated the token, the
        # retry is REFRESH_TOKEN_REUSED and the session ends, as it had anyway (the new refresh
        # token was lost with the answer); if not, the retry succeeds.
        response = await unary(
            self._auth,
            "RefreshToken",
            auth_pb2.RefreshTokenRequest(refresh_token=refresh_token),
            auth_pb2.RefreshTokenResponse,
            policy=self._policy,
            retry_on=UNKNOWN_OUTCOME,
            tokens=None,
        )
        return response.tokens

    async def _issue_service_token(
        self, client_id: str, client_secret: str
    ) -> auth_pb2.IssueServiceTokenResponse:
        return await unary(
            self._auth,
            "IssueServiceToken",
            auth_pb2.IssueServiceTokenRequest(client_id=client_id, client_secret=client_secret),
            auth_pb2.IssueServiceTokenResponse,
            policy=self._policy,
            retry_on=UNKNOWN_OUTCOME,
            tokens=None,
        )

    def _adopt(self, access_token: str) -> None:
        self._access_token = access_token
        self._ended_by = None
        lifetime = _lifetime(access_token)
        if lifetime is None:
            self._expires_at = self._renew_at = math.inf
            return
        self._expires_at = time.monotonic() + lifetime
        self._renew_at = self._expires_at - min(self._margin, lifetime / 2)


def _lifetime(access_token: str) -> float | None:
    """`exp - iat` of a JWT, unverified (only to know when to refresh); None if not a JWT."""
    try:
        payload = access_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"]) - float(claims["iat"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None
