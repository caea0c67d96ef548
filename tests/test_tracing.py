"""Tracing, end to end: the real services as processes export their spans over OTLP to a
collector run by the test. A caller's trace continues into the wallet, from the wallet into
the auth service, into the money transaction, and into the JSON log lines."""

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from auth_service.admin import rotate_keys
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tests.auth_helpers import bearer, register_and_login, service_token
from tests.databases import migrated_database
from tests.processes import ServiceProcess, running_services

WALLET = "wallet.v1.WalletService"
AUTH = "auth.v1.AuthService"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps every span it is sent, with its service."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                attribute.value.string_value
                for attribute in resource_spans.resource.attributes
                if attribute.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def in_trace(self, trace_id: bytes) -> list[tuple[str, trace_pb2.Span]]:
        return [(service, span) for service, span in self.spans if span.trace_id == trace_id]


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield collector, port
    await server.stop(None)


@pytest.fixture
def fresh_database(database_server_url: str) -> Iterator[str]:
    """A database of this test's own: it rotates the signing key."""
    with migrated_database(database_server_url) as url:
        yield url


@pytest.fixture
async def traced_services(
    fresh_database: str, collector: tuple[Collector, int], tmp_path: Path
) -> AsyncIterator[tuple[ServiceProcess, ServiceProcess]]:
    _, port = collector
    async with running_services(
        fresh_database,
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="100",  # ms between exports, so the test waits little
        LOG_LEVEL="INFO",
        # No periodic key fetch during the test: the wallet fetches the new key because a
        # call brings a token signed with it.
        REVOCATION_REFRESH_SECONDS="300",
    ) as (auth, [wallet]):
        yield auth, wallet


async def wait_for_spans(
    collector: Collector, trace_id: bytes, wanted: set[tuple[str, str]], seconds: float = 15
) -> list[tuple[str, trace_pb2.Span]]:
    """The trace's spans once it has every (service, span name) of `wanted`."""
    deadline = time.monotonic() + seconds
    while True:
        spans = collector.in_trace(trace_id)
        if wanted <= {(service, span.name) for service, span in spans}:
            return spans
        if time.monotonic() > deadline:
            seen = sorted({(service, span.name) for service, span in spans})
            raise AssertionError(f"missing {wanted - set(seen)}; the trace has {seen}")
        await asyncio.sleep(0.1)


def log_lines(path: Path) -> list[dict[str, object]]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def test_a_callers_trace_runs_through_the_wallet_into_auth_and_the_transaction(
    traced_services: tuple[ServiceProcess, ServiceProcess],
    collector: tuple[Collector, int],
    fresh_database: str,
) -> None:
    auth, wallet = traced_services
    spans_of, _ = collector
    await rotate_keys(fresh_database)  # the wallet has not seen the key of the next tokens
    async with (
        grpc.aio.insecure_channel(auth.address) as auth_channel,
        grpc.aio.insecure_channel(wallet.address) as wallet_channel,
    ):
        _, token = await register_and_login(auth_channel)
        bank = await service_token(auth_channel, fresh_database, ["wallet:credit"])
        wallets = wallet_pb2_grpc.WalletServiceStub(wallet_channel)

        trace_id = secrets.token_bytes(16)
        caller_span = secrets.token_bytes(8)
        traceparent = f"00-{trace_id.hex()}-{caller_span.hex()}-01"
        created = await wallets.CreateWallet(
            wallet_pb2.CreateWalletRequest(currency="EUR"),
            metadata=(*bearer(token), ("traceparent", traceparent)),
        )
        credit_trace = secrets.token_bytes(16)
        await wallets.Credit(
            wallet_pb2.CreditRequest(
                wallet_id=created.wallet.id, amount=500, idempotency_key="traced-credit"
            ),
            metadata=(
                *bearer(bank),
                ("traceparent", f"00-{credit_trace.hex()}-{caller_span.hex()}-01"),
            ),
        )

    spans = await wait_for_spans(
        spans_of,
        trace_id,
        {
            ("wallet-service", f"/{WALLET}/CreateWallet"),
            ("wallet-service", f"/{AUTH}/GetPublicKeys"),  # the wallet's call, client side
            ("auth-service", f"/{AUTH}/GetPublicKeys"),  # ... and served by auth
        },
    )
    by_kind = {(service, span.name, span.kind): span for service, span in spans}  # one of each here
    server = by_kind[("wallet-service", f"/{WALLET}/CreateWallet", trace_pb2.Span.SPAN_KIND_SERVER)]
    assert server.parent_span_id == caller_span  # the caller's trace continues
    wallet_to_auth = by_kind[
        ("wallet-service", f"/{AUTH}/GetPublicKeys", trace_pb2.Span.SPAN_KIND_CLIENT)
    ]
    auth_side = by_kind[("auth-service", f"/{AUTH}/GetPublicKeys", trace_pb2.Span.SPAN_KIND_SERVER)]
    assert wallet_to_auth.parent_span_id == server.span_id
    assert auth_side.parent_span_id == wallet_to_auth.span_id

    # The credit's transaction runs for a group of calls: its span links to this call's.
    credit_spans = await wait_for_spans(
        spans_of, credit_trace, {("wallet-service", f"/{WALLET}/Credit")}
    )
    credit_server = next(span for _, span in credit_spans if span.name == f"/{WALLET}/Credit")
    transactions = [
        span
        for service, span in spans_of.spans
        if span.name == "money transaction"
        and any(link.span_id == credit_server.span_id for link in span.links)
    ]
    assert len(transactions) == 1
    assert {attribute.key for attribute in transactions[0].attributes} >= {"wallet.operations"}

    # The JSON log line of each call names its trace and span.
    wallet_rpc_lines = [
        line
        for line in log_lines(wallet.log_path)
        if line.get("message") == "rpc" and line.get("trace_id") == trace_id.hex()
    ]
    assert [line["method"] for line in wallet_rpc_lines] == [f"/{WALLET}/CreateWallet"]
    assert wallet_rpc_lines[0]["span_id"] == server.span_id.hex()
    auth_rpc_lines = [
        line
        for line in log_lines(auth.log_path)
        if line.get("message") == "rpc" and line.get("trace_id") == trace_id.hex()
    ]
    span_of_method = {line["method"]: line["span_id"] for line in auth_rpc_lines}
    assert span_of_method[f"/{AUTH}/GetPublicKeys"] == auth_side.span_id.hex()
