"""Domain errors and the one place that turns them into gRPC statuses.

Handlers raise `ServiceError(code, reason, message)`; the error interceptor
(`shared.interceptors.ErrorInterceptor`) answers with that status code and a
`google.rpc.ErrorInfo` detail carrying the stable `reason` and the service as
`domain`. Clients branch on `reason`, never on the message.
"""

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class ServiceError(Exception):
    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, **metadata: object
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = {key: str(value) for key, value in metadata.items()}

    def to_status(self, domain: str) -> grpc.Status:
        # Messages and metadata may quote what the caller sent: clipped, so that an answer
        # always fits in a client's metadata limit (8 KiB by default) whatever came in.
        metadata = {key: _clip(value, MAX_METADATA_VALUE) for key, value in self.metadata.items()}
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=domain, metadata=metadata)
        detail = any_pb2.Any()
        detail.Pack(info)
        return rpc_status.to_status(
            status_pb2.Status(
                code=self.code.value[0],
                message=_clip(self.message, MAX_MESSAGE),
                details=[detail],
            )
        )


MAX_MESSAGE = 512
MAX_METADATA_VALUE = 128


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def invalid_argument(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, **metadata)


def unauthenticated(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, reason, message, **metadata)


def permission_denied(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, reason, message, **metadata)


def not_found(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, reason, message, **metadata)


def already_exists(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.ALREADY_EXISTS, reason, message, **metadata)


def failed_precondition(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, **metadata)


def resource_exhausted(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message, **metadata)


def aborted(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.ABORTED, reason, message, **metadata)


def unavailable(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, reason, message, **metadata)


def deadline_exceeded(reason: str, message: str, **metadata: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, reason, message, **metadata)


def error_info(error: grpc.aio.AioRpcError | grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, for clients and tests."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None
