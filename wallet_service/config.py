"""The wallet service's settings (environment variables, `.env`)."""

from pydantic import Field

from shared.config import CommonSettings

SERVICE_NAME = "wallet.v1.WalletService"


class WalletSettings(CommonSettings):
    wallet_host: str = "[::]"
    wallet_port: int = Field(50052, ge=0, le=65535)
    # Apply pending migrations/wallet files at start-up.
    auto_migrate: bool = True
    # The auth service, whose GetPublicKeys verifies access tokens.
    auth_address: str = Field("localhost:50051", min_length=1)

    @property
    def address(self) -> str:
        return f"{self.wallet_host}:{self.wallet_port}"
