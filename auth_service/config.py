"""The auth service's settings (environment variables, `.env`)."""

from pydantic import Field

from shared.config import CommonSettings

SERVICE_NAME = "auth.v1.AuthService"


class AuthSettings(CommonSettings):
    auth_host: str = "[::]"
    auth_port: int = Field(50051, ge=0, le=65535)
    # Apply pending migrations/auth files at start-up.
    auto_migrate: bool = True

    @property
    def address(self) -> str:
        return f"{self.auth_host}:{self.auth_port}"
