"""`python -m auth_service`: migrate, then serve until SIGINT/SIGTERM (as several workers
on one port when AUTH_WORKERS says so: shared/workers.py)."""

from auth_service.config import AuthSettings
from auth_service.server import start
from shared import server
from shared.config import load_settings


def main() -> None:
    settings = load_settings(AuthSettings)
    server.main(
        "auth",
        settings,
        start,
        workers=settings.auth_workers,
        metrics=(settings.auth_metrics_host, settings.auth_metrics_port),
        auto_migrate=settings.auto_migrate,
    )


if __name__ == "__main__":
    main()
