"""Configuration from environment variables (and `.env` when present).

Each service declares its settings as a subclass of `CommonSettings`; field names
are the environment variable names in lower case (`auth_port` <- AUTH_PORT).
"""

from typing import Literal, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class ConfigError(SystemExit):
    """A bad configuration value: the process stops with this message."""


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: str = Field(DEFAULT_DATABASE_URL, min_length=1)
    db_pool_min_size: int = Field(2, ge=1, le=100)
    db_pool_max_size: int = Field(10, ge=1, le=200)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # After SIGTERM/SIGINT: seconds of NOT_SERVING while still serving, so that balancers
    # stop sending calls first; then seconds that in-flight calls get to finish.
    shutdown_drain_seconds: float = Field(2.0, ge=0, le=300)
    shutdown_grace_seconds: float = Field(10.0, ge=0, le=300)
    # Seconds between database checks that drive the health status.
    health_check_interval_seconds: float = Field(5.0, gt=0, le=300)
    # Access tokens: the `iss` the auth service writes and the wallet service expects,
    # and the `aud` both agree on.
    token_issuer: str = Field("wallet-system-auth", min_length=1)
    token_audience: str = Field("wallet-system", min_length=1)
    # How often token verifiers fetch the auth service's keys and revocations: a revoked
    # session, account or key is refused everywhere within about this many seconds.
    revocation_refresh_seconds: float = Field(10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _pool_bounds_ordered(self) -> "CommonSettings":
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE is above DB_POOL_MAX_SIZE")
        return self


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def load_settings(settings_class: type[SettingsT]) -> SettingsT:
    """Reads the settings, turning a bad value into one clear start-up error."""
    try:
        settings = settings_class()
    except ValidationError as error:
        problems = "; ".join(_describe(problem) for problem in error.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None
    return settings


def _describe(problem: ErrorDetails) -> str:
    """`FIELD: message` for one field's problem; the message alone for a rule across fields."""
    field = ".".join(str(part) for part in problem["loc"]).upper()
    message = problem["msg"].removeprefix("Value error, ")
    return f"{field}: {message}" if field else message
