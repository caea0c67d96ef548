"""The knobs of `make bench`, from environment variables (README and docs/performance.md)."""

import os
from dataclasses import dataclass
from pathlib import Path

from tests.bench.scenarios import REFERENCES, SCENARIOS

OUTPUT = Path(__file__).resolve().parents[2] / ".data" / "bench"


@dataclass(frozen=True)
class BenchSettings:
    seconds: float  # measured, per scenario and per reference
    warmup: float  # before each measurement, not counted
    in_flight: int  # calls in flight in all, and pgbench clients
    processes: int  # load client processes (the in-flight calls are split over them)
    channels: int  # gRPC connections per load process and service
    wallets: int  # the uniform scenarios spread over this many wallets
    scenarios: list[str]
    references: list[str]
    auth_address: str | None  # a running system (BENCH_AUTH and BENCH_WALLET), or None
    wallet_address: str | None
    database_url: str | None  # the server to use (DATABASE_URL), or None: a private one
    output: Path


def _names(variable: str, known: list[str], default: list[str]) -> list[str]:
    """A subset of `known` from a list separated by spaces or commas, in `known`'s order."""
    text = os.environ.get(variable, "").replace(",", " ").split()
    if not text:
        return default
    if unknown := set(text) - set(known):
        raise SystemExit(f"{variable}: unknown {', '.join(sorted(unknown))}; known: {known}")
    return [name for name in known if name in text]


def load() -> BenchSettings:
    scenarios = _names("BENCH_SCENARIOS", list(SCENARIOS), list(SCENARIOS))
    needed = [
        name
        for name in REFERENCES
        if any(name in SCENARIOS[scenario].compared_with for scenario in scenarios)
    ]
    auth, wallet = os.environ.get("BENCH_AUTH"), os.environ.get("BENCH_WALLET")
    if bool(auth) != bool(wallet):
        raise SystemExit("BENCH_AUTH and BENCH_WALLET go together (a running system)")
    database_url = os.environ.get("DATABASE_URL") or None
    if auth and not database_url:
        raise SystemExit(
            "with BENCH_AUTH and BENCH_WALLET, DATABASE_URL must name the system's database:"
            " the bench creates service accounts in it, and pgbench runs on its server"
        )
    in_flight = int(os.environ.get("BENCH_IN_FLIGHT", "64"))
    processes = int(os.environ.get("BENCH_CLIENT_PROCESSES", "2"))
    if in_flight < 1 or not 1 <= processes <= in_flight:
        raise SystemExit("BENCH_IN_FLIGHT >= BENCH_CLIENT_PROCESSES >= 1, please")
    return BenchSettings(
        seconds=float(os.environ.get("BENCH_SECONDS", "10")),
        warmup=float(os.environ.get("BENCH_WARMUP", "2")),
        in_flight=in_flight,
        processes=processes,
        channels=int(os.environ.get("BENCH_CHANNELS", "8")),
        wallets=int(os.environ.get("BENCH_WALLETS", "10000")),
        scenarios=scenarios,
        references=_names("BENCH_REFERENCES", list(REFERENCES), needed),
        auth_address=auth or None,
        wallet_address=wallet or None,
        database_url=database_url,
        output=Path(os.environ.get("BENCH_OUTPUT") or OUTPUT),
    )
