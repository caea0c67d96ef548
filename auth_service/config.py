"""The auth service's settings (environment variables, `.env`)."""

from pydantic import Field

from shared.config import CommonSettings
from shared.transport import KIB, ServerTransportSettings

SERVICE_NAME = "auth.v1.AuthService"
DAY = 24 * 3600


class AuthSettings(CommonSettings, ServerTransportSettings):
    auth_host: str = "[::]"
    auth_port: int = Field(50051, ge=0, le=65535)
    # Worker processes sharing the port (SO_REUSEPORT); 0 means one per core.
    auth_workers: int = Field(0, ge=0, le=64)
    # Prometheus /metrics over HTTP; 0 turns it off. Loopback only unless told otherwise.
    auth_metrics_port: int = Field(9051, ge=0, le=65535)
    auth_metrics_host: str = Field("127.0.0.1", min_length=1)
    # Apply pending migrations/auth files at start-up.
    auto_migrate: bool = True
    # Longest database statement (lock waits included).
    statement_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # Every auth request is small: the largest, Register, is under 5 KiB.
    grpc_max_receive_message_bytes: int = Field(16 * KIB, ge=1 * KIB, le=1024 * KIB)

    # bcrypt work factor: each step doubles the time of a hash (12 is about 0.25 s).
    bcrypt_cost: int = Field(12, ge=4, le=20)
    # Threads that hash and check passwords (default: one per core), and how many more
    # checks may wait for one before calls are refused with SERVER_BUSY.
    password_hash_workers: int | None = Field(None, ge=1, le=256)
    password_hash_queue_size: int = Field(16, ge=0, le=10_000)
    access_token_ttl_seconds: int = Field(900, ge=60, le=DAY)
    # A session's whole life: refreshing rotates the token but does not extend it.
    refresh_token_ttl_seconds: int = Field(30 * DAY, ge=300, le=365 * DAY)

    # Login throttling: at most this many failed attempts per window, per account
    # (ASVS: at most 100 an hour) and per client address; it lifts when the window ends.
    login_throttle_window_seconds: int = Field(900, ge=1, le=DAY)
    login_max_failures_per_account: int = Field(10, ge=1, le=100)
    login_max_failures_per_address: int = Field(100, ge=1, le=100_000)
    # The account limit never shuts out an address the account logged in from within this
    # many days, so guessing from elsewhere cannot lock the owner out; failures from such an
    # address have a budget of their own per account and window instead.
    login_trusted_address_days: int = Field(30, ge=1, le=365)
    login_max_failures_per_trusted_address: int = Field(10, ge=1, le=100)

    # Registration throttling: attempts per window per client address, and in total.
    register_throttle_window_seconds: int = Field(3600, ge=1, le=DAY)
    register_max_per_address: int = Field(20, ge=1, le=1_000_000)
    register_max_total: int = Field(3600, ge=1, le=10_000_000)

    @property
    def address(self) -> str:
        return f"{self.auth_host}:{self.auth_port}"
