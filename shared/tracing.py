"""OpenTelemetry tracing, off unless the environment asks for it.

It is on in a serving process when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and `OTEL_SDK_DISABLED` is not `true`. Spans then
go to that OTLP/gRPC collector in batches; the SDK reads the rest of the standard `OTEL_*`
variables itself (service name, sampler, headers, batch sizes). Each call gets a server span
(OpenTelemetry's gRPC instrumentation, continuing a caller's `traceparent`); the wallet's calls
to the auth service carry the trace on; the wallet's money transactions get a span of their own,
linked to the calls they serve; every JSON log line written inside a span names its trace.

Off, none of this runs: no interceptor, no span, no exporter thread.
"""

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from opentelemetry import trace

log = logging.getLogger(__name__)

_tracer = trace.get_tracer("wallet-system")
_provider: Any = None  # the SDK's TracerProvider once `configure_tracing` has run


def requested() -> bool:
    """Whether the environment asks for tracing."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(
        os.environ.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def enabled() -> bool:
    return _provider is not None


def configure_tracing(service: str) -> None:
    """Exports this process's spans over OTLP when the environment asks for it. Called once
    by each serving process (a worker, not its supervisor), before its server starts."""
    global _provider
    if _provider is not None or not requested():
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES override the service's own name.
    resource = Resource.create({"service.name": f"{service}-service"}).merge(
        OTELResourceDetector().detect()
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing on", extra={"otel_service_name": resource.attributes["service.name"]})


def shutdown_tracing() -> None:
    """Sends the spans still in the batch; at a process's exit."""
    if _provider is not None:
        _provider.shutdown()


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The outermost server interceptor when tracing is on: every other one, and the call's
    log lines, then run inside the call's span."""
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a channel to the other service: its calls carry the trace on."""
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


def record_status(code: grpc.StatusCode) -> None:
    """Puts the call's status on its server span. The instrumentation sees `abort()` but not
    the `abort_with_status()` the error interceptor answers with."""
    if not enabled():
        return
    span = trace.get_current_span()
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_FAULTS:
        span.set_status(trace.StatusCode.ERROR, code.name)


# The codes that mean the server failed, as OpenTelemetry's gRPC conventions list them; the
# rest (a refusal such as INSUFFICIENT_FUNDS) are the caller's business, not an error here.
_SERVER_FAULTS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}


def current_span_context() -> trace.SpanContext | None:
    """The span a piece of work is being done for, to link to it from elsewhere."""
    if not enabled():
        return None
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


@contextlib.contextmanager
def linked_span(
    name: str, links: Iterable[trace.SpanContext | None], attributes: dict[str, Any]
) -> Iterator[None]:
    """A span for work done on behalf of several calls at once (one database transaction
    for a group of movements), linked to each of their spans."""
    if not enabled():
        yield
        return
    with _tracer.start_as_current_span(
        name,
        links=[trace.Link(context) for context in links if context is not None],
        attributes=attributes,
    ):
        yield


def log_fields() -> dict[str, str]:
    """The current trace and span ids, for a log line; empty outside a recorded span."""
    if not enabled():
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }
