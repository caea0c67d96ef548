"""`python -m wallet_service`: migrate, then serve until SIGINT/SIGTERM."""

import asyncio

from shared.config import load_settings
from shared.logs import configure_logging
from shared.metrics import serve_metrics
from shared.migrations import migrate
from shared.server import serve_until_signal
from wallet_service.config import WalletSettings
from wallet_service.server import start


async def _serve(settings: WalletSettings) -> None:
    running = await start(settings)
    await serve_until_signal(
        running, settings.shutdown_grace_seconds, settings.shutdown_drain_seconds
    )


def main() -> None:
    settings = load_settings(WalletSettings)
    configure_logging("wallet", settings.log_level)
    if settings.auto_migrate:
        migrate(settings.database_url, "wallet")
    serve_metrics(settings.wallet_metrics_port, settings.wallet_metrics_host)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
