"""The auth service's settings (environment variables, `.env`)."""

from pydantic import Field

from shared.config import CommonSettings

SERVICE_NAME = "auth.v1.AuthService"
DAY = 24 * 3600


class AuthSettings(CommonSettings):
    auth_host: str = "[::]"
    auth_port: int = Field(50051, ge=0, le=65535)
    # Prometheus /metrics over HTTP; 0 turns it off.
    auth_metrics_port: int = Field(9051, ge=0, le=65535)
    # Apply pending migrations/auth files at start-up.
    auto_migrate: bool = True

    # bcrypt work factor: each step doubles the time of a hash (12 is about 0.25 s).
    bcrypt_cost: int = Field(12, ge=4, le=20)
    access_token_ttl_seconds: int = Field(900, ge=60, le=DAY)
    # A session's whole life: refreshing rotates the token but does not extend it.
    refresh_token_ttl_seconds: int = Field(30 * DAY, ge=300, le=365 * DAY)

    # Login throttling: at most this many failed attempts per window, per account
    # (ASVS: at most 100 an hour) and per client address; it lifts when the window ends.
    login_throttle_window_seconds: int = Field(900, ge=1, le=DAY)
    login_max_failures_per_account: int = Field(10, ge=1, le=100)
    login_max_failures_per_address: int = Field(100, ge=1, le=100_000)
    # The account limit never shuts out an address the account logged in from within this
    # many days, so guessing from elsewhere cannot lock the owner out.
    login_trusted_address_days: int = Field(30, ge=1, le=365)

    @property
    def address(self) -> str:
        return f"{self.auth_host}:{self.auth_port}"
