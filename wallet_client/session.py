"""Who the client calls as: an access token, kept fresh.

- A user (after Login): the access token is refreshed with the refresh token shortly before
  it expires, and once more when a service answers TOKEN_EXPIRED (a clock that runs slow).
  A refresh token is single use, and presenting a spent one revokes the whole session (reuse
  detection), so one refresh runs at a time and every caller that wanted one meanwhile takes
  its result.
- A service account: a new token is issued from the client id and secret (IssueServiceToken).
- A token given as is (`use_token`): used until the services refuse it.

When a token is due is judged from its own lifetime (`exp - iat`, read from the JWT without
checking it: only to know when to refresh) on this machine's monotonic clock from when it
arrived, so a wrong wall clock cannot make the client refresh on every call. If a refresh
cannot get through while the token is still valid, the client keeps using it.
"""

import asyncio
import base64
import json
import logging
import math
import time
from typing import Any

from shared.gen.auth.v1 import auth_pb2
from wallet_client.calls import UNKNOWN_OUTCOME, RetryPolicy, unary
from wallet_client.errors import NotLoggedIn, OutcomeUnknown, Unauthenticated

log = logging.getLogger("wallet_client")

# After a refresh that could not get through, how long before the next try (the token is
# still valid meanwhile).
RETRY_REFRESH_SECONDS = 1.0


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
        self._refresh_at = math.inf

    # --- starting and ending ---------------------------------------------------------------

    def start_user(self, tokens: auth_pb2.TokenPair) -> None:
        self.end()
        self._user_tokens = auth_pb2.TokenPair()
        self._user_tokens.CopyFrom(tokens)
        self._adopt(tokens.access_token)

    async def start_service(
        self, client_id: str, client_secret: str
    ) -> auth_pb2.IssueServiceTokenResponse:
        response = await self._issue_service_token(client_id, client_secret, None)
        self.end()
        self._service_credentials = (client_id, client_secret)
        self._adopt(response.access_token)
        return response

    def start_static(self, access_token: str) -> None:
        self.end()
        self._adopt(access_token)

    def end(self) -> None:
        self._access_token = None
        self._user_tokens = None
        self._service_credentials = None
        self._expires_at = self._refresh_at = math.inf

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
        if time.monotonic() >= self._refresh_at:
            try:
                await self._renew(token, proactive=True)
            except OutcomeUnknown as error:
                if time.monotonic() >= self._expires_at:
                    raise
                log.warning("could not refresh the access token yet, using it meanwhile: %s", error)
        return self._current()

    async def renew_expired(self, stale_token: str) -> bool:
        if self._user_tokens is None and self._service_credentials is None:
            return False  # a token given as is: nothing to renew it with
        await self._renew(stale_token, proactive=False)
        return True

    async def renew_now(self) -> None:
        await self._renew(self._current(), proactive=False)

    def _current(self) -> str:
        if self._access_token is None:
            raise NotLoggedIn("log in first (login, login_service or use_token)")
        return self._access_token

    async def _renew(self, stale_token: str, *, proactive: bool) -> None:
        async with self._lock:  # one refresh at a time: a refresh token works once
            if self._access_token != stale_token:
                return  # renewed (or ended) while this caller waited
            if proactive and time.monotonic() < self._refresh_at:
                return  # a failed refresh postponed the next one while this caller waited
            # While the token is valid, try no longer than it is: it can be used meanwhile.
            valid_for = self._expires_at - time.monotonic()
            budget = (
                min(self._policy.total_timeout, valid_for) if proactive and valid_for > 0 else None
            )
            try:
                if self._service_credentials is not None:
                    response = await self._issue_service_token(*self._service_credentials, budget)
                    self._adopt(response.access_token)
                elif self._user_tokens is not None:
                    await self._refresh_user(self._user_tokens, budget)
            except OutcomeUnknown:
                self._refresh_at = time.monotonic() + RETRY_REFRESH_SECONDS
                raise
            except Unauthenticated:
                self.end()  # refresh token spent, revoked or expired; credentials refused
                raise

    async def _refresh_user(self, tokens: auth_pb2.TokenPair, budget: float | None) -> None:
        # Retried on every unknown outcome: if a lost answer had already rotated the token, the
        # retry is REFRESH_TOKEN_REUSED and the session ends, as it had anyway (the new refresh
        # token was lost with the answer); if not, the retry succeeds.
        response = await unary(
            self._auth,
            "RefreshToken",
            auth_pb2.RefreshTokenRequest(refresh_token=tokens.refresh_token),
            auth_pb2.RefreshTokenResponse,
            policy=self._policy,
            retry_on=UNKNOWN_OUTCOME,
            tokens=None,
            total_timeout=budget,
        )
        self._user_tokens = auth_pb2.TokenPair()
        self._user_tokens.CopyFrom(response.tokens)
        self._adopt(response.tokens.access_token)

    async def _issue_service_token(
        self, client_id: str, client_secret: str, budget: float | None
    ) -> auth_pb2.IssueServiceTokenResponse:
        return await unary(
            self._auth,
            "IssueServiceToken",
            auth_pb2.IssueServiceTokenRequest(client_id=client_id, client_secret=client_secret),
            auth_pb2.IssueServiceTokenResponse,
            policy=self._policy,
            retry_on=UNKNOWN_OUTCOME,
            tokens=None,
            total_timeout=budget,
        )

    def _adopt(self, access_token: str) -> None:
        self._access_token = access_token
        lifetime = _lifetime(access_token)
        if lifetime is None:
            self._expires_at = self._refresh_at = math.inf
            return
        self._expires_at = time.monotonic() + lifetime
        self._refresh_at = self._expires_at - min(self._margin, lifetime / 2)


def _lifetime(access_token: str) -> float | None:
    """`exp - iat` of a JWT, unverified (only to know when to refresh); None if not a JWT."""
    try:
        payload = access_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"]) - float(claims["iat"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None
