"""`python -m auth_service`: migrate, then serve until SIGINT/SIGTERM (as several workers
on one port when AUTH_WORKERS says so: shared/workers.py)."""

import sys

from auth_service.config import AuthSettings
from auth_service.server import start
from shared.config import load_settings
from shared.logs import configure_logging
from shared.migrations import migrate
from shared.server import serve
from shared.workers import Worker, run_service, this_worker, workers_for


async def _serve(settings: AuthSettings, worker: Worker) -> None:
    await serve(
        "auth",
        lambda: start(settings, worker),
        settings.shutdown_grace_seconds,
        settings.shutdown_drain_seconds,
    )


def main() -> None:
    settings = load_settings(AuthSettings)
    configure_logging("auth", settings.log_level)
    count = workers_for(settings.auth_workers)
    worker = this_worker(count)
    if settings.auto_migrate and (worker is None or not worker.shares_port):
        migrate(settings.database_url, "auth")  # once, by the supervisor of several
    metrics = (settings.auth_metrics_host, settings.auth_metrics_port)
    sys.exit(run_service("auth_service", worker, count, lambda w: _serve(settings, w), metrics))


if __name__ == "__main__":
    main()
