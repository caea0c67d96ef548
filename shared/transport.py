"""How the servers are reached and what they accept, from settings: TLS (mutual TLS when a
client CA is given), and limits on message size, metadata size and concurrent calls.

Everything is off or generous by default, for local use; the README's security section says
what to set in production. `server_transport()` turns the settings into what `start_server`
needs; `auth_channel()` opens the wallet's channel to the auth service, with TLS when set.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import grpc
from pydantic import BaseModel, Field, model_validator

from shared import tracing

KIB = 1024
MIB = 1024 * KIB


class ServerTransportSettings(BaseModel):
    """Mixed into each service's settings (environment variables of the same names)."""

    # TLS: the server's certificate chain and private key, PEM files. Both or neither.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Mutual TLS: clients must present a certificate signed by this CA (PEM file).
    tls_client_ca_file: Path | None = None
    # Largest request message, in bytes; larger ones are refused by gRPC (RESOURCE_EXHAUSTED)
    # before any of the service's code runs.
    grpc_max_receive_message_bytes: int = Field(1 * MIB, ge=1 * KIB, le=64 * MIB)
    # Largest request metadata (headers), in bytes.
    grpc_max_metadata_bytes: int = Field(8 * KIB, ge=1 * KIB, le=64 * KIB)
    # Calls in flight on one client connection (HTTP/2 streams); more wait for a free slot,
    # though in a burst gRPC may refuse a few with UNAVAILABLE: keep it well above what one
    # client sends at once.
    grpc_max_concurrent_streams: int = Field(1000, ge=1, le=100_000)
    # Calls in flight in one server process; more are refused with RESOURCE_EXHAUSTED.
    grpc_max_concurrent_rpcs: int = Field(2000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _tls_files_fit_together(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE")
        return self


class AuthClientSettings(BaseModel):
    """How the wallet service reaches the auth service (environment variables AUTH_TLS_...)."""

    # Use TLS to the auth service; with AUTH_TLS_CA_FILE its certificate is checked against
    # that CA, else against the system's roots. Setting any AUTH_TLS_* file turns TLS on too.
    auth_tls: bool = False
    auth_tls_ca_file: Path | None = None
    # Mutual TLS: the wallet's own certificate chain and key, PEM files. Both or neither.
    auth_tls_cert_file: Path | None = None
    auth_tls_key_file: Path | None = None
    # The name to check in the auth service's certificate when it differs from AUTH_ADDRESS.
    auth_tls_server_name: str | None = None

    @model_validator(mode="after")
    def _client_files_fit_together(self) -> Self:
        if (self.auth_tls_cert_file is None) != (self.auth_tls_key_file is None):
            raise ValueError("AUTH_TLS_CERT_FILE and AUTH_TLS_KEY_FILE go together")
        return self

    @property
    def uses_tls(self) -> bool:
        return (
            self.auth_tls
            or self.auth_tls_ca_file is not None
            or self.auth_tls_cert_file is not None
        )


@dataclass(frozen=True)
class ServerTransport:
    """What `start_server` binds and limits with; the default is plaintext with gRPC's limits."""

    credentials: grpc.ServerCredentials | None = None
    options: Sequence[tuple[str, Any]] = ()
    maximum_concurrent_rpcs: int | None = None

    def bind(self, server: grpc.aio.Server, address: str) -> int:
        """Binds `address`; returns the port (0 if it could not be bound)."""
        if self.credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, self.credentials)


def server_transport(settings: ServerTransportSettings) -> ServerTransport:
    return ServerTransport(
        credentials=server_credentials(settings),
        options=[
            ("grpc.max_receive_message_length", settings.grpc_max_receive_message_bytes),
            # Soft and hard limit alike: above a soft limit gRPC refuses only at random.
            ("grpc.max_metadata_size", settings.grpc_max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", settings.grpc_max_metadata_bytes),
            ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ],
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
    )


def server_credentials(settings: ServerTransportSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM files; None when TLS is off."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    client_ca = _read(settings.tls_client_ca_file)
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(settings: AuthClientSettings) -> grpc.ChannelCredentials | None:
    """TLS credentials for the channel to the auth service; None when TLS is off."""
    if not settings.uses_tls:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.auth_tls_ca_file),
        private_key=_read(settings.auth_tls_key_file),
        certificate_chain=_read(settings.auth_tls_cert_file),
    )


def auth_channel(
    settings: AuthClientSettings, address: str, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A channel to the auth service at `address`, over TLS when the settings say so."""
    credentials = channel_credentials(settings)
    interceptors = tracing.client_interceptors()  # the wallet's calls carry its trace on
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    if settings.auth_tls_server_name:
        options = [*options, ("grpc.ssl_target_name_override", settings.auth_tls_server_name)]
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()
