"""The authentication interceptor: every call but health and reflection needs a valid access
token. The token is checked locally (signature with keys from the auth service's
GetPublicKeys, cached) and the caller's Principal is handed to the handlers."""

import contextlib
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import grpc

from shared.interceptors import Continuation, wrap_calls
from shared.tokens import Principal, TokenVerifier, bearer_token

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")

# Standard services that answer without a token.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def current_principal() -> Principal:
    """The authenticated caller of the current RPC."""
    return _principal.get()


class AuthenticationInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler_call_details.method.startswith(PUBLIC_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata

        @contextlib.asynccontextmanager
        async def authenticated(request: Any, context: Any) -> AsyncIterator[None]:
            _principal.set(await self._verifier.verify(bearer_token(metadata)))
            yield

        # Every kind of call: a streaming RPC gets no way around the token check.
        return wrap_calls(handler, authenticated)
