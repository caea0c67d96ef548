"""`python -m auth_service`: migrate, then serve until SIGINT/SIGTERM."""

import asyncio

from auth_service.config import AuthSettings
from auth_service.server import start
from shared.config import load_settings
from shared.logs import configure_logging
from shared.metrics import serve_metrics
from shared.migrations import migrate
from shared.server import serve_until_signal


async def _serve(settings: AuthSettings) -> None:
    running = await start(settings)
    await serve_until_signal(
        running, settings.shutdown_grace_seconds, settings.shutdown_drain_seconds
    )


def main() -> None:
    settings = load_settings(AuthSettings)
    configure_logging("auth", settings.log_level)
    if settings.auto_migrate:
        migrate(settings.database_url, "auth")
    serve_metrics(settings.auth_metrics_port, settings.auth_metrics_host)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
