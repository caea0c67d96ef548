"""Server interceptors shared by both services.

Each interceptor wraps the unary handler that gRPC resolved for a call, so the
wrapper runs inside the handler's own task (context variables set there are seen
by the servicer). Streaming handlers (health Watch, reflection) pass through.
Order in `start_server`: tracing when on (outermost), logging, errors, then the service's own.
"""

import asyncio
import contextlib
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import psycopg
import psycopg_pool

from shared import tracing
from shared.db import NoConnectionBeforeDeadline
from shared.deadlines import set_call_deadline
from shared.errors import (
    ServiceError,
    aborted,
    deadline_exceeded,
    invalid_argument,
    unavailable,
)
from shared.logs import request_id_var
from shared.metrics import record_rpc

log = logging.getLogger(__name__)

# grpc's type stubs predate grpc.aio's handler types: handlers and contexts are `Any` here.
UnaryBehavior = Callable[[Any, Any], Awaitable[Any]]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Any]]
# Entered around each call (a server stream's whole life): (request, context) -> context.
Around = Callable[[Any, Any], contextlib.AbstractAsyncContextManager[None]]


def wrap_calls(handler: Any, around: Around) -> Any:
    """Returns `handler` with `around(request, context)` entered around each of its calls,
    unary and server-streaming alike (the services have no client-streaming RPC)."""
    if handler is None:
        return handler
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_call(request: Any, context: Any) -> Any:
            async with around(request, context):
                return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def stream_call(request: Any, context: Any) -> AsyncIterator[Any]:
            async with around(request, context):
                # An async generator, or a coroutine that writes itself (grpc's health Watch).
                responses = stream(request, context)
                if inspect.isasyncgen(responses):
                    async for response in responses:
                        yield response
                else:
                    await responses

        return grpc.unary_stream_rpc_method_handler(
            stream_call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for item_key, value in details.invocation_metadata or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode()
    return None


class LoggingInterceptor(grpc.aio.ServerInterceptor):
    """Gives every call a request id (the caller's `x-request-id` or a new one),
    echoes it in the response metadata, notes its deadline (`shared.deadlines`), logs one
    line per call and records its metrics. A call the client cancelled, or whose deadline
    passed, is counted as CANCELLED or DEADLINE_EXCEEDED."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        method = handler_call_details.method
        request_id = caller_request_id(handler_call_details) or uuid.uuid4().hex

        @contextlib.asynccontextmanager
        async def logged(request: Any, context: Any) -> AsyncIterator[None]:
            request_id_var.set(request_id)
            set_call_deadline(context.time_remaining())
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                await _send_request_id(context, request_id)
                yield
            except (asyncio.CancelledError, GeneratorExit):
                code = _why_cancelled(context)
                raise
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                seconds = time.perf_counter() - started
                record_rpc(method, _code_name(code), seconds)
                if isinstance(code, grpc.StatusCode):
                    tracing.record_status(code)
                log.info(
                    "rpc",
                    extra={
                        "method": method,
                        "code": _code_name(code),
                        "duration_ms": round(seconds * 1000, 2),
                    },
                )

        return wrap_calls(await continuation(handler_call_details), logged)


async def _send_request_id(context: Any, request_id: str) -> None:
    """Sends the request id as initial metadata. A call whose client left (or whose deadline
    passed) after grpc started its handler cannot send anything: it ends as cancelled, not as
    an error (grpc would count it UNKNOWN and log a traceback)."""
    try:
        await context.send_initial_metadata((("x-request-id", request_id),))
    except Exception:
        if not _client_gone(context):
            raise
        raise asyncio.CancelledError from None


def _why_cancelled(context: Any) -> grpc.StatusCode:
    """grpc cancels the handler when the client goes away or the deadline passes."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


# A caller's request id is echoed and logged only if it looks like one (a UUID, a trace id).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def caller_request_id(details: grpc.HandlerCallDetails) -> str | None:
    """The caller's `x-request-id` if it is 1 to 64 safe characters; None otherwise, so that a
    made-up kilobyte header is neither echoed nor written to the logs."""
    value = metadata_value(details, "x-request-id")
    return value if value is not None and _REQUEST_ID.fullmatch(value) else None


def _code_name(code: object) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


def database_error(error: Exception) -> ServiceError | None:
    """The status for a database failure that is not a bug, or None for one that is."""
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate in ("40001", "40P01"):  # serialization failure, deadlock: retry the call
        return aborted("CONCURRENT_UPDATE", "lost a race with a concurrent update, retry")
    if sqlstate in ("55P03", "57014"):  # lock_timeout, statement_timeout from the deadline
        return deadline_exceeded("DEADLINE_EXCEEDED", "deadline exceeded while waiting")
    if isinstance(error, NoConnectionBeforeDeadline):  # the pool was busy until the deadline
        return deadline_exceeded(
            "DEADLINE_EXCEEDED", "deadline exceeded while waiting for a database connection"
        )
    if isinstance(error, psycopg.DataError):  # a value PostgreSQL refuses, such as a NUL byte
        return invalid_argument("INVALID_VALUE", f"a value was refused: {error}")
    if isinstance(
        error, psycopg_pool.PoolTimeout | psycopg.OperationalError | psycopg.InterfaceError
    ):
        return unavailable("DATABASE_UNAVAILABLE", "database unavailable, retry")
    return None


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """The one place that maps exceptions to statuses with an ErrorInfo detail.

    `ServiceError` carries its own code and reason. A database that cannot be
    reached is UNAVAILABLE (the same call may simply be retried). Anything else
    is a bug: logged with its traceback and answered INTERNAL.
    """

    def __init__(self, domain: str) -> None:
        self._domain = domain

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        @contextlib.asynccontextmanager
        async def mapped(request: Any, context: Any) -> AsyncIterator[None]:
            try:
                yield
            except grpc.aio.AbortError:
                raise
            except Exception as exception:
                error = service_error(exception)
                await _answer(context, error.to_status(self._domain))
            else:
                if _client_gone(context):  # nobody to answer (grpc would log the failed send)
                    raise asyncio.CancelledError

        return wrap_calls(await continuation(handler_call_details), mapped)


def service_error(exception: Exception) -> ServiceError:
    """The status for an exception a handler raised (logged when it is a bug)."""
    if isinstance(exception, ServiceError):
        return exception
    if isinstance(exception, NotImplementedError):  # the generated base servicer's default
        return ServiceError(grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED", "not implemented yet")
    if isinstance(exception, psycopg.Error | psycopg_pool.PoolTimeout):
        mapped = database_error(exception)
        if mapped is not None:
            log.warning("database error", extra={"error": str(exception)})
            return mapped
        log.error("unexpected database error", exc_info=exception)
    else:
        log.error("unhandled error", exc_info=exception)
    return ServiceError(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error")


async def _answer(context: Any, status: grpc.Status) -> None:
    """Ends the call with `status`, unless the client is gone: then there is nobody to tell
    (and grpc would log the failed send as an error), so the call ends as cancelled."""
    if _client_gone(context):
        raise asyncio.CancelledError
    await context.abort_with_status(status)


def _client_gone(context: Any) -> bool:
    remaining = context.time_remaining()
    return bool(context.cancelled() or (remaining is not None and remaining <= 0))
