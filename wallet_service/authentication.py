"""Authentication in the wallet service: every call but health and reflection needs a valid
access token (checked by `shared.authentication`); handlers read the caller with
`current_principal()`."""

from shared.authentication import AuthenticationInterceptor as _AuthenticationInterceptor
from shared.authentication import current_principal
from shared.tokens import TokenVerifier
from wallet_service.config import SERVICE_NAME

__all__ = ["AuthenticationInterceptor", "current_principal", "needs_token"]

# Standard services that answer without a token.
PUBLIC_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def needs_token(method: str) -> bool:
    return not method.startswith(PUBLIC_PREFIXES)


class AuthenticationInterceptor(_AuthenticationInterceptor):
    def __init__(self, verifier: TokenVerifier) -> None:
        super().__init__(verifier, SERVICE_NAME, needs_token)
