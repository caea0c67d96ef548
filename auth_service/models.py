"""The auth service's records, as the repository reads them."""

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


@dataclass(frozen=True)
class User:
    id: UUID
    email: str
    display_name: str
    password_hash: str
    created_at: datetime


@dataclass(frozen=True)
class Session:
    """A refresh token family: every token descending from one login."""

    id: UUID
    user_id: UUID
    expires_at: datetime


@dataclass(frozen=True)
class PresentedRefreshToken:
    """A stored refresh token and the state of its session."""

    session_id: UUID
    user_id: UUID
    session_expires_at: datetime
    spent: bool
    revoked: bool
    expired: bool


@dataclass(frozen=True)
class SigningKey:
    id: str
    algorithm: str
    private_key_pem: str


@dataclass(frozen=True)
class PublishedKey:
    id: str
    algorithm: str
    public_key_pem: str
    created_at: datetime
    retired_at: datetime | None


@dataclass(frozen=True)
class ServiceAccount:
    client_id: str
    secret_hash: bytes
    scopes: list[str]


@dataclass(frozen=True)
class ThrottleCount:
    attempts: int
    window_start: datetime
    retry_after_seconds: float
