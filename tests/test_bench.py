"""`make bench` end to end for a few seconds, so that the harness cannot rot: it starts the
system, creates and funds wallets, drives two scenarios from its load processes, runs pgbench
with the service's own SQL (the reference most likely to drift from the service) and writes its
figures. Nothing about speed is asserted."""

import json
import sys
from pathlib import Path

from tests.databases import admin_url
from tests.programs import run_program


async def test_make_bench_runs_end_to_end_and_writes_its_figures(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": admin_url(),  # a throwaway database on the tests' server
        "BENCH_SECONDS": "1",
        "BENCH_WARMUP": "0.5",
        "BENCH_SCENARIOS": "credit-uniform transfer-hot",
        "BENCH_REFERENCES": "service-credit-uniform",
        "BENCH_WALLETS": "100",
        "BENCH_IN_FLIGHT": "8",
        "BENCH_OUTPUT": str(tmp_path),
        "BCRYPT_COST": "4",
    }
    done = await run_program([sys.executable, "-m", "tests.bench"], env=env, seconds=100)
    assert done.returncode == 0, done.output[-5000:]
    document = json.loads((tmp_path / "latest.json").read_text())

    scenarios = {row["name"]: row for row in document["scenarios"]}
    assert list(scenarios) == ["credit-uniform", "transfer-hot"]
    for row in scenarios.values():
        assert row["done"] > 0, row
        assert row["errors"] == {}, row
        assert row["p99_ms"] >= row["p50_ms"] > 0
        assert row["client_cpu_us_per_call"] > 0
        assert row["cpu_percent"]["wallet"]["percent"] > 0  # read from /proc

    reference = document["references"]["service-credit-uniform"]
    assert reference["done"] > 0, reference
    assert reference["errors"] == {}, reference
    [comparison] = [row for row in document["comparisons"] if row["against"] == reference["name"]]
    assert comparison["scenario"] == "credit-uniform" and comparison["value"] > 0
    assert (tmp_path / "latest.png").read_bytes().startswith(b"\x89PNG")
    assert "| credit-uniform |" in done.output  # the table
