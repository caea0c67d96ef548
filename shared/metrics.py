"""Prometheus metrics: every RPC counted by method and status code, and timed.

Names follow the go-grpc-prometheus conventions, so existing dashboards work. Each service
process serves them over HTTP at `/metrics` on its own port (0 turns that off).
"""

from typing import Any

from prometheus_client import Counter, Histogram, start_http_server

RPCS_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by method and status code.",
    ["grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from receiving an RPC to answering it.",
    ["grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MALFORMED_REQUESTS = Counter(
    "grpc_server_malformed_requests_total",
    "Requests whose body was not a valid message (answered MALFORMED_REQUEST).",
    ["grpc_method"],
)


def record_rpc(method: str, code: str, seconds: float) -> None:
    RPCS_HANDLED.labels(method, code).inc()
    RPC_SECONDS.labels(method).observe(seconds)


def serve_metrics(port: int, host: str = "127.0.0.1") -> Any:
    """Serves /metrics on `host`:`port` from a background thread; 0 means no metrics endpoint.
    Returns the HTTP server (None when off)."""
    if not port:
        return None
    server, _ = start_http_server(port, addr=host)
    return server
