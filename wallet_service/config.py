"""The wallet service's settings (environment variables, `.env`)."""

from typing import Literal

from pydantic import Field

from shared.config import CommonSettings

SERVICE_NAME = "wallet.v1.WalletService"


class WalletSettings(CommonSettings):
    wallet_host: str = "[::]"
    wallet_port: int = Field(50052, ge=0, le=65535)
    # Prometheus /metrics over HTTP; 0 turns it off.
    wallet_metrics_port: int = Field(9052, ge=0, le=65535)
    # Apply pending migrations/wallet files at start-up.
    auto_migrate: bool = True
    # The auth service, whose GetPublicKeys verifies access tokens.
    auth_address: str = Field("localhost:50051", min_length=1)
    # Longest wait for a wallet's row lock / for one statement, when the client sets no
    # deadline (a client deadline shortens both).
    lock_timeout_seconds: float = Field(5.0, gt=0, le=60)
    statement_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # Idempotency outcomes are kept at least this long (SPEC: 24 hours or more).
    idempotency_retention_hours: float = Field(24.0, ge=24)
    # How often the service deletes outcomes older than the retention.
    idempotency_cleanup_interval_seconds: float = Field(3600.0, gt=0)
    # How often expired holds are marked EXPIRED (they stop counting at expiry regardless).
    hold_sweep_interval_seconds: float = Field(10.0, gt=0, le=3600)
    # Events: kept at least this many days (7 or more), cleaned up every hour; an idle
    # WatchEvents stream gets a heartbeat this often.
    event_retention_days: float = Field(7.0, ge=7)
    watch_heartbeat_seconds: float = Field(15.0, gt=0, le=300)
    # `serializable` runs every transaction SERIALIZABLE (the mode for CockroachDB or
    # YugabyteDB); serialization failures are retried inside the service.
    wallet_isolation_level: Literal["read_committed", "serializable"] = "read_committed"

    @property
    def address(self) -> str:
        return f"{self.wallet_host}:{self.wallet_port}"
