"""The wallet service's settings (environment variables, `.env`)."""

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from shared.config import CommonSettings
from shared.transport import AuthClientSettings, ServerTransportSettings

SERVICE_NAME = "wallet.v1.WalletService"
DAY = 24 * 3600


class WalletSettings(CommonSettings, ServerTransportSettings, AuthClientSettings):
    wallet_host: str = "[::]"
    wallet_port: int = Field(50052, ge=0, le=65535)
    # Worker processes sharing the port (SO_REUSEPORT); 0 means one per core.
    wallet_workers: int = Field(0, ge=0, le=64)
    # Prometheus /metrics over HTTP; 0 turns it off. Loopback only unless told otherwise.
    wallet_metrics_port: int = Field(9052, ge=0, le=65535)
    wallet_metrics_host: str = Field("127.0.0.1", min_length=1)
    # Apply pending migrations/wallet files at start-up.
    auto_migrate: bool = True
    # The auth service, whose GetPublicKeys verifies access tokens.
    auth_address: str = Field("localhost:50051", min_length=1)
    # Longest wait for a wallet's row lock / for one statement, when the client sets no
    # deadline (a client deadline shortens both).
    lock_timeout_seconds: float = Field(5.0, gt=0, le=60)
    statement_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # Money transactions one process runs at once; more movements ready than that share
    # transactions (engine/combiner.py). Measured with `make bench`: docs/performance.md.
    wallet_max_transactions: int = Field(3, ge=1, le=100)
    # Access tokens living longer than this (`exp - iat`) are refused, even when validly signed:
    # at least the auth service's ACCESS_TOKEN_TTL_SECONDS.
    token_max_lifetime_seconds: int = Field(900, ge=60, le=DAY)
    # Signs page tokens; the same on every instance behind one balancer (unset: each process
    # makes up its own, and a page token works only on the instance that issued it).
    page_token_secret: SecretStr | None = Field(None, min_length=32)
    # Largest page of ListWallets, ListTransactions and other lists; larger requests are clamped.
    max_page_size: int = Field(100, ge=1, le=1000)
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

    @model_validator(mode="after")
    def _reads_keep_a_connection(self) -> "WalletSettings":
        # Reads and the event feed use the pool too; money transactions never take all of it.
        if self.wallet_max_transactions >= self.db_pool_max_size:
            raise ValueError("WALLET_MAX_TRANSACTIONS must be below DB_POOL_MAX_SIZE")
        return self

    @property
    def address(self) -> str:
        return f"{self.wallet_host}:{self.wallet_port}"
