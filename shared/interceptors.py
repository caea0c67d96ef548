"""Server interceptors shared by both services.

Each interceptor wraps the unary handler that gRPC resolved for a call, so the
wrapper runs inside the handler's own task (context variables set there are seen
by the servicer). Streaming handlers (health Watch, reflection) pass through.
Order in `build_server`: logging (outermost), errors, then the service's own.
"""

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import psycopg
import psycopg_pool

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


def wrap_unary(handler: Any, wrapper: Callable[[UnaryBehavior], UnaryBehavior]) -> Any:
    """Returns `handler` with its unary-unary behaviour wrapped; others unchanged."""
    if handler is None or handler.unary_unary is None:
        return handler
    return grpc.unary_unary_rpc_method_handler(
        wrapper(handler.unary_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for item_key, value in details.invocation_metadata or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode()
    return None


class LoggingInterceptor(grpc.aio.ServerInterceptor):
    """Gives every call a request id (the caller's `x-request-id` or a new one),
    echoes it in the response metadata, logs one line per call and records its metrics."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        method = handler_call_details.method
        request_id = caller_request_id(handler_call_details) or uuid.uuid4().hex

        def wrapper(behavior: UnaryBehavior) -> UnaryBehavior:
            async def logged(request: Any, context: Any) -> Any:
                request_id_var.set(request_id)
                await context.send_initial_metadata((("x-request-id", request_id),))
                started = time.perf_counter()
                code = grpc.StatusCode.OK
                try:
                    return await behavior(request, context)
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    seconds = time.perf_counter() - started
                    record_rpc(method, _code_name(code), seconds)
                    log.info(
                        "rpc",
                        extra={
                            "method": method,
                            "code": _code_name(code),
                            "duration_ms": round(seconds * 1000, 2),
                        },
                    )

            return logged

        return wrap_unary(await continuation(handler_call_details), wrapper)


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
        def wrapper(behavior: UnaryBehavior) -> UnaryBehavior:
            async def mapped(request: Any, context: Any) -> Any:
                try:
                    return await behavior(request, context)
                except ServiceError as error:
                    await context.abort_with_status(error.to_status(self._domain))
                except grpc.aio.AbortError:
                    raise
                except NotImplementedError:  # the generated base servicer's default
                    await context.abort_with_status(
                        ServiceError(
                            grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED", "not implemented yet"
                        ).to_status(self._domain)
                    )
                except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
                    mapped_error = database_error(error)
                    if mapped_error is None:
                        log.exception("unexpected database error")
                        mapped_error = ServiceError(
                            grpc.StatusCode.INTERNAL, "INTERNAL", "internal error"
                        )
                    else:
                        log.warning("database error", extra={"error": str(error)})
                    await context.abort_with_status(mapped_error.to_status(self._domain))
                except Exception:
                    log.exception("unhandled error")
                    await context.abort_with_status(
                        ServiceError(
                            grpc.StatusCode.INTERNAL, "INTERNAL", "internal error"
                        ).to_status(self._domain)
                    )

            return mapped

        return wrap_unary(await continuation(handler_call_details), wrapper)
