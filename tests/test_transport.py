"""TLS, mutual TLS and server limits, by configuration (issue 8, finding 11), with
certificates the tests make (trustme)."""

import socket
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_service.config import AuthSettings
from auth_service.server import start as start_auth
from shared.config import ConfigError, load_settings
from shared.gen.auth.v1 import auth_pb2, auth_pb2_grpc
from shared.gen.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from shared.metrics import serve_metrics
from shared.migrations import SERVICES, migrate
from shared.server import RunningServer
from tests.auth_helpers import PASSWORD, auth_database, bearer, unique_email
from tests.databases import throwaway_database
from tests.service_pair import auth_settings, wallet_settings
from wallet_service.config import WalletSettings
from wallet_service.server import start as start_wallet

AUTH_NAME = "auth.internal"  # the only name in the auth server's certificate


@dataclass
class Certificates:
    ca: Path
    auth_cert: Path
    auth_key: Path
    wallet_cert: Path  # for the wallet's server side and as its client certificate to auth
    wallet_key: Path
    stranger_cert: Path  # issued by another CA
    stranger_key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("certificates")
    ca, other_ca = trustme.CA(), trustme.CA()

    def write(name: str, leaf: Any) -> tuple[Path, Path]:
        cert, key = folder / f"{name}.pem", folder / f"{name}.key"
        cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        return cert, key

    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    auth = write("auth", ca.issue_cert(AUTH_NAME))
    wallet = write("wallet", ca.issue_cert("localhost", "127.0.0.1"))
    stranger = write("stranger", other_ca.issue_cert("127.0.0.1"))
    return Certificates(folder / "ca.pem", *auth, *wallet, *stranger)


@pytest.fixture
async def tls_auth(
    database_server_url: str, certificates: Certificates
) -> AsyncIterator[RunningServer]:
    """An auth server that speaks mutual TLS only, on a database for both services."""
    with throwaway_database(database_server_url) as url:
        for service in SERVICES:
            migrate(url, service)
        running = await start_auth(
            auth_settings(
                url,
                tls_cert_file=certificates.auth_cert,
                tls_key_file=certificates.auth_key,
                tls_client_ca_file=certificates.ca,
            )
        )
        yield running
        await running.stop(grace=0)


def secure_channel(
    port: int, certificates: Certificates, client: tuple[Path, Path] | None, name: str
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.read_bytes(),
        certificate_chain=client[0].read_bytes() if client else None,
        private_key=client[1].read_bytes() if client else None,
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", name)]
    )


async def public_keys(channel: grpc.aio.Channel) -> Any:
    return await auth_pb2_grpc.AuthServiceStub(channel).GetPublicKeys(
        auth_pb2.GetPublicKeysRequest(), timeout=5
    )


async def refused(channel: grpc.aio.Channel) -> None:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await public_keys(channel)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_lets_in_only_clients_with_a_certificate_from_the_ca(
    tls_auth: RunningServer, certificates: Certificates
) -> None:
    port = tls_auth.port
    client = (certificates.wallet_cert, certificates.wallet_key)
    async with secure_channel(port, certificates, client, AUTH_NAME) as channel:
        assert (await public_keys(channel)).keys
    await refused(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))  # plaintext
    await refused(secure_channel(port, certificates, None, AUTH_NAME))  # no certificate
    stranger = (certificates.stranger_cert, certificates.stranger_key)
    await refused(secure_channel(port, certificates, stranger, AUTH_NAME))  # another CA's
    await refused(secure_channel(port, certificates, client, "evil.example"))  # wrong name


async def test_the_wallet_talks_to_auth_over_mutual_tls_and_serves_tls(
    tls_auth: RunningServer, certificates: Certificates
) -> None:
    url = tls_auth.pool.conninfo
    wallet = await start_wallet(
        wallet_settings(
            url,
            tls_auth.port,
            tls_cert_file=certificates.wallet_cert,
            tls_key_file=certificates.wallet_key,
            auth_tls_ca_file=certificates.ca,
            auth_tls_cert_file=certificates.wallet_cert,
            auth_tls_key_file=certificates.wallet_key,
            auth_tls_server_name=AUTH_NAME,
        )
    )
    try:
        client = (certificates.wallet_cert, certificates.wallet_key)
        async with secure_channel(tls_auth.port, certificates, client, AUTH_NAME) as auth:
            stub = auth_pb2_grpc.AuthServiceStub(auth)
            email = unique_email()
            await stub.Register(
                auth_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="T")
            )
            tokens = (
                await stub.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
            ).tokens
        async with secure_channel(wallet.port, certificates, None, "localhost") as channel:
            response = await wallet_pb2_grpc.WalletServiceStub(channel).ListWallets(
                wallet_pb2.ListWalletsRequest(), metadata=bearer(tokens.access_token), timeout=10
            )
        assert list(response.wallets) == []
        await refused(grpc.aio.insecure_channel(f"127.0.0.1:{wallet.port}"))
    finally:
        await wallet.stop(grace=0)


@pytest.mark.parametrize(
    ("settings_class", "variables"),
    [
        (AuthSettings, {"TLS_CERT_FILE": "/x.pem"}),
        (AuthSettings, {"TLS_KEY_FILE": "/x.key"}),
        (AuthSettings, {"TLS_CLIENT_CA_FILE": "/ca.pem"}),
        (WalletSettings, {"AUTH_TLS_CERT_FILE": "/x.pem"}),
    ],
)
def test_tls_files_that_do_not_fit_together_stop_start_up(
    monkeypatch: pytest.MonkeyPatch, settings_class: Any, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings(settings_class)
    assert "TLS_" in str(raised.value.code)


# --- limits --------------------------------------------------------------------------------


@pytest.fixture
async def limited_auth(
    database_server_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[RunningServer]:
    with auth_database(database_server_url) as url:
        running = await start_auth(auth_settings(url, **request.param))
        yield running
        await running.stop(grace=0)


async def open_watch(channel: grpc.aio.Channel, deadline: float | None = None) -> Any:
    """A health Watch stream: a call that stays open. Returns it once its first answer came."""
    call = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(), timeout=deadline
    )
    await call.read()
    return call


@pytest.mark.parametrize("limited_auth", [{"grpc_max_concurrent_streams": 1}], indirect=True)
async def test_one_connection_gets_at_most_the_configured_concurrent_streams(
    limited_auth: RunningServer,
) -> None:
    address = f"127.0.0.1:{limited_auth.port}"
    async with grpc.aio.insecure_channel(address) as channel:
        watch = await open_watch(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await open_watch(channel, deadline=1)  # waits for a free stream, in vain
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Another connection is served (channels in one process share connections unless
        # told otherwise).
        async with grpc.aio.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as other:
            await public_keys(other)
        watch.cancel()


@pytest.mark.parametrize("limited_auth", [{"grpc_max_concurrent_rpcs": 2}], indirect=True)
async def test_calls_past_the_concurrent_rpc_limit_are_refused(
    limited_auth: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{limited_auth.port}") as channel:
        watches = [await open_watch(channel) for _ in range(2)]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await public_keys(channel)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for watch in watches:
            watch.cancel()


def test_metrics_listen_on_loopback_unless_told_otherwise() -> None:
    assert AuthSettings().auth_metrics_host == "127.0.0.1"
    assert WalletSettings().wallet_metrics_host == "127.0.0.1"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve_metrics(port)
    try:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"grpc_server_handled_total" in response.read()
    finally:
        server.shutdown()
        server.server_close()
