"""The wallet service's settings (environment variables, `.env`)."""

from pydantic import Field

from shared.config import CommonSettings

SERVICE_NAME = "wallet.v1.WalletService"


class WalletSettings(CommonSettings):
    wallet_host: str = "[::]"
    wallet_port: int = Field(50052, ge=0, le=65535)
    # Apply pending migrations/wallet files at start-up.
    auto_migrate: bool = True

    @property
    def address(self) -> str:
        return f"{self.wallet_host}:{self.wallet_port}"
