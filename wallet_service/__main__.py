"""`python -m wallet_service`: migrate, then serve until SIGINT/SIGTERM (as several workers
on one port when WALLET_WORKERS says so: shared/workers.py)."""

import sys

from shared.config import load_settings
from shared.logs import configure_logging
from shared.migrations import migrate
from shared.server import serve
from shared.workers import Worker, run_service, this_worker, workers_for
from wallet_service.config import WalletSettings
from wallet_service.server import start


async def _serve(settings: WalletSettings, worker: Worker) -> None:
    await serve(
        "wallet",
        lambda: start(settings, worker),
        settings.shutdown_grace_seconds,
        settings.shutdown_drain_seconds,
    )


def main() -> None:
    settings = load_settings(WalletSettings)
    configure_logging("wallet", settings.log_level)
    count = workers_for(settings.wallet_workers)
    worker = this_worker(count)
    if settings.auto_migrate and (worker is None or not worker.shares_port):
        migrate(settings.database_url, "wallet")  # once, by the supervisor of several
    metrics = (settings.wallet_metrics_host, settings.wallet_metrics_port)
    sys.exit(run_service("wallet_service", worker, count, lambda w: _serve(settings, w), metrics))


if __name__ == "__main__":
    main()
