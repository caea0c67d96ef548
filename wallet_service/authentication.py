"""The authentication interceptor: every call but health and reflection needs a valid access
token. The token is checked locally (signature with keys from the auth service's
GetPublicKeys, cached) and the caller's Principal is handed to the handlers."""

import contextvars
from typing import Any

import grpc

from shared.interceptors import Continuation, UnaryBehavior, wrap_unary
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

        def wrapper(behavior: UnaryBehavior) -> UnaryBehavior:
            async def authenticated(request: Any, context: Any) -> Any:
                principal = await self._verifier.verify(bearer_token(metadata))
                _principal.set(principal)
                return await behavior(request, context)

            return authenticated

        return wrap_unary(handler, wrapper)
