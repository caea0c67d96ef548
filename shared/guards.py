"""Checks that run before a handler, the same for unary and server-streaming RPCs.

`guard_handler` wraps a resolved handler so that a check runs first; a `ServiceError` from the
check ends the call with that status (and its ErrorInfo). `MalformedRequestInterceptor` uses it
to answer INVALID_ARGUMENT `MALFORMED_REQUEST` for a request body that is not a valid message:
gRPC decodes the body before any interceptor runs, so it swaps in a decoder that never raises.
"""

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from shared.errors import ServiceError, invalid_argument
from shared.metrics import MALFORMED_REQUESTS

log = logging.getLogger(__name__)

# grpc's type stubs predate grpc.aio's handler types: handlers and contexts are `Any` here.
Guard = Callable[[Any, Any], Awaitable[None]]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Any]]


def guard_handler(
    handler: Any,
    guard: Guard,
    domain: str,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Any:
    """`handler` with `guard(request, context)` run before its behaviour, for every kind of
    RPC (a client-streaming one's guard gets the request iterator). `request_deserializer`,
    if given, replaces the handler's own."""
    if handler is None:
        return None

    async def check(request: Any, context: Any) -> None:
        try:
            await guard(request, context)
        except ServiceError as error:
            await context.abort_with_status(error.to_status(domain))

    behavior, make_handler, wrap = {
        (False, False): (handler.unary_unary, grpc.unary_unary_rpc_method_handler, _unary),
        (False, True): (handler.unary_stream, grpc.unary_stream_rpc_method_handler, _streaming),
        (True, False): (handler.stream_unary, grpc.stream_unary_rpc_method_handler, _unary),
        (True, True): (handler.stream_stream, grpc.stream_stream_rpc_method_handler, _streaming),
    }[(handler.request_streaming, handler.response_streaming)]
    return make_handler(
        wrap(behavior, check),
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _unary(behavior: Any, check: Guard) -> Any:
    async def guarded(request: Any, context: Any) -> Any:
        await check(request, context)
        return await behavior(request, context)

    return guarded


def _streaming(behavior: Any, check: Guard) -> Any:
    async def guarded(request: Any, context: Any) -> AsyncIterator[Any]:
        await check(request, context)
        # A streaming behaviour is an async generator, or a coroutine that writes itself.
        responses = behavior(request, context)
        if inspect.isasyncgen(responses):
            async for response in responses:
                yield response
        else:
            await responses

    return guarded


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request body that could not be decoded."""

    error_type: str


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Answers INVALID_ARGUMENT `MALFORMED_REQUEST` for a body that is not a valid message
    (bad protobuf, invalid UTF-8), logged and counted, instead of gRPC's UNKNOWN.

    Install it innermost, so that the interceptors before it (authentication) answer first:
    a malformed call without a token is UNAUTHENTICATED."""

    def __init__(self, domain: str) -> None:
        self._domain = domain

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(handler_call_details)
        # A client stream decodes message by message inside gRPC: left as it is.
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        decode = handler.request_deserializer

        def decode_or_mark(body: bytes) -> Any:
            try:
                return decode(body)
            except Exception as error:  # protobuf's DecodeError, UnicodeDecodeError, ...
                return MalformedRequest(type(error).__name__)

        async def refuse_malformed(request: Any, context: Any) -> None:
            if isinstance(request, MalformedRequest):
                MALFORMED_REQUESTS.labels(method).inc()
                log.warning(
                    "malformed request", extra={"method": method, "error": request.error_type}
                )
                raise invalid_argument(
                    "MALFORMED_REQUEST", "the request body is not a valid message of this RPC"
                )

        return guard_handler(handler, refuse_malformed, self._domain, decode_or_mark)
