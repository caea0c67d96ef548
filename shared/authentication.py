"""The authentication interceptor, for both services: each call that needs an access token
gets it checked locally (`shared.tokens.TokenVerifier`: signature with the auth service's
published keys, claims, revocations), and the caller's Principal is handed to the handlers
through `current_principal()`. Handlers never parse tokens themselves."""

import contextvars
from collections.abc import Callable
from typing import Any

import grpc

from shared.guards import Continuation, guard_handler
from shared.tokens import Principal, TokenVerifier, bearer_token

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")


def current_principal() -> Principal:
    """The authenticated caller of the current RPC."""
    return _principal.get()


class AuthenticationInterceptor(grpc.aio.ServerInterceptor):
    """Checks the token of every call whose method `needs_token`, before the handler and
    before the request body is looked at (unary and server-streaming calls alike)."""

    def __init__(
        self, verifier: TokenVerifier, domain: str, needs_token: Callable[[str], bool]
    ) -> None:
        self._verifier = verifier
        self._domain = domain
        self._needs_token = needs_token

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(handler_call_details)
        if not self._needs_token(handler_call_details.method):
            return handler
        metadata = handler_call_details.invocation_metadata

        async def authenticate(request: Any, context: Any) -> None:
            _principal.set(await self._verifier.verify(bearer_token(metadata)))

        return guard_handler(handler, authenticate, self._domain)
