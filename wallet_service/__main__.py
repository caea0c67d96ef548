"""`python -m wallet_service`: migrate, then serve until SIGINT/SIGTERM (as several workers
on one port when WALLET_WORKERS says so: shared/workers.py)."""

from shared import server
from shared.config import load_settings
from wallet_service.config import WalletSettings
from wallet_service.server import start


def main() -> None:
    settings = load_settings(WalletSettings)
    server.main(
        "wallet",
        settings,
        start,
        workers=settings.wallet_workers,
        metrics=(settings.wallet_metrics_host, settings.wallet_metrics_port),
        auto_migrate=settings.auto_migrate,
    )


if __name__ == "__main__":
    main()
