"""What `make bench` prints and keeps: the tables, the JSON document and the chart."""

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from tests.bench.references import pgbench_program
from tests.bench.results import Measurement
from tests.bench.scenarios import REFERENCES, SCENARIOS
from tests.bench.settings import BenchSettings
from tests.bench.system import System


def machine(system: System, load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor(),
    )
    memory_kb = next(
        (int(line.split()[1]) for line in _lines("/proc/meminfo") if line.startswith("MemTotal")),
        0,
    )
    pgbench = subprocess.run(
        [pgbench_program(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(memory_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "postgres": system.postgres_version,
        "pgbench": pgbench,
        # 1, 5 and 15 minutes: the bench's own load and its neighbours'.
        "load_average_at_start": [round(value, 2) for value in load_at_start],
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
    }


def _lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines() if Path(path).exists() else []


def document(
    settings: BenchSettings,
    system: System,
    scenarios: list[Measurement],
    references: dict[str, Measurement],
    seconds: float,
    load_at_start: tuple[float, float, float],
    connections: str,
) -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(system, load_at_start),
        "system": {
            "where": system.where,
            "bcrypt_cost": system.bcrypt_cost,
            "connections": connections,
        },
        "settings": {
            "seconds": settings.seconds,
            "warmup": settings.warmup,
            "in_flight": settings.in_flight,
            "client_processes": settings.processes,
            "channels_per_process": settings.channels,
            "wallets": settings.wallets,
        },
        "scenarios": [
            {
                **scenario.as_json(),
                "description": SCENARIOS[scenario.name].description,
                "unit": SCENARIOS[scenario.name].unit,
            }
            for scenario in scenarios
        ],
        "references": {
            name: {**reference.as_json(), "description": REFERENCES[name].description}
            for name, reference in references.items()
        },
        "comparisons": _comparisons(scenarios, references),
        "seconds_in_all": round(seconds),
    }


def _comparisons(
    scenarios: list[Measurement], references: dict[str, Measurement]
) -> list[dict[str, Any]]:
    """Each scenario against its references, and against issue 11's targets."""
    rows: list[dict[str, Any]] = []
    for measured in scenarios:
        scenario = SCENARIOS[measured.name]
        for name in scenario.compared_with:
            if name not in references or not references[name].rate:
                continue
            ratio = measured.rate / references[name].rate
            target = scenario.target_ratio if name == scenario.target_reference else None
            rows.append(
                {
                    "scenario": measured.name,
                    "against": name,
                    "value": round(ratio, 3),
                    "target": None if target is None else f">= {target:g}",
                    "met": None if target is None else ratio >= target,
                    "score": None if target is None else ratio / target,
                }
            )
        p99 = measured.latency_ms(0.99)
        if scenario.target_p99_ms is not None and p99 is not None:
            rows.append(
                {
                    "scenario": measured.name,
                    "against": "p99 (ms)",
                    "value": round(p99, 1),
                    "target": f"< {scenario.target_p99_ms:g}",
                    "met": p99 < scenario.target_p99_ms,
                    "score": scenario.target_p99_ms / p99 if p99 else None,
                }
            )
    return rows


# --- text ------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    """Milliseconds, to three significant digits at most (0.0431, 4.31, 43.1, 431)."""
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _cpu(row: dict[str, Any], name: str) -> str:
    """`105% (2.6 ms)`: the group's CPU (100% is one core), and its CPU time per call."""
    usage = row["cpu_percent"].get(name)
    if usage is None:
        return "-"
    per_call = row["cpu_ms_per_call"].get(name)
    return f"{usage['percent']:.0f}%" + ("" if per_call is None else f" ({_ms(per_call)} ms)")


def _machine(row: dict[str, Any]) -> str:
    """`197% (12%)`: both cores' use, and the part that was not the bench's (neighbours)."""
    usage = row["cpu_percent"].get("machine")
    if usage is None:
        return "-"
    others = row["neighbours_cpu_percent"]
    return f"{usage['percent']:.0f}%" + ("" if others is None else f" ({others:.0f}%)")


def progress_line(measured: Measurement) -> str:
    return (
        f"  {measured.name:<26} {measured.rate:9,.0f}/s   p50 {_ms(measured.latency_ms(0.5)):>7} ms"
        f"   p99 {_ms(measured.latency_ms(0.99)):>7} ms   errors {measured.error_count}"
    )


def tables(document: dict[str, Any]) -> str:
    lines = [
        "| scenario | per s | p50 ms | p99 ms | errors | client CPU µs/call | wallet CPU (per call)"
        " | auth CPU (per call) | postgres CPU (per call) | machine CPU (others) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in document["scenarios"]:
        name = row["name"] if row["unit"] == "calls" else f"{row['name']} ({row['unit']})"
        lines.append(
            f"| {name} | {_number(row['rate_per_second'])} | {_ms(row['p50_ms'])}"
            f" | {_ms(row['p99_ms'])} | {sum(row['errors'].values())}"
            f" | {_number(row['client_cpu_us_per_call'])} | {_cpu(row, 'wallet')}"
            f" | {_cpu(row, 'auth')} | {_cpu(row, 'postgres')} | {_machine(row)} |"
        )
    lines += [
        "",
        "| reference | per s | p50 ms | p99 ms | errors | postgres CPU (per call) | pgbench CPU"
        " | machine CPU (others) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in document["references"].items():
        lines.append(
            f"| {name} | {_number(row['rate_per_second'])} | {_ms(row['p50_ms'])}"
            f" | {_ms(row['p99_ms'])} | {sum(row['errors'].values())}"
            f" | {_cpu(row, 'postgres')} | {_cpu(row, 'pgbench')} | {_machine(row)} |"
        )
    lines += [
        "",
        "| scenario | against | ratio | target | met |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for row in document["comparisons"]:
        met = "" if row["met"] is None else ("met" if row["met"] else "**not met**")
        lines.append(
            f"| {row['scenario']} | {row['against']} | {row['value']:g}"
            f" | {row['target'] or ''} | {met} |"
        )
    failures = [
        f"- {row['name']}: {error} x{count}"
        for row in [*document["scenarios"], *document["references"].values()]
        for error, count in row["errors"].items()
    ]
    if failures:
        lines += ["", "errors:", *failures]
    return "\n".join(lines)


# --- files -----------------------------------------------------------------------------


def save(document: dict[str, Any], folder: Path, stamp: str) -> list[Path]:
    """The JSON and the chart, under the run's time stamp and as latest.*."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2) + "\n"
    paths = []
    for name in (stamp, "latest"):
        json_path, png_path = folder / f"{name}.json", folder / f"{name}.png"
        json_path.write_text(text)
        chart(document, png_path)
        paths += [json_path, png_path]
    return paths


def chart(document: dict[str, Any], path: Path) -> None:
    """Rates of the scenarios and references (log scale), and each target's standing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(row["name"], row["rate_per_second"], "tab:blue") for row in document["scenarios"]]
    rows += [
        (name, row["rate_per_second"], "tab:gray") for name, row in document["references"].items()
    ]
    targets = [row for row in document["comparisons"] if row["score"] is not None]
    figure, (rates, standing) = plt.subplots(
        1, 2, figsize=(15, 0.45 * max(len(rows), len(targets), 4) + 2), width_ratios=[3, 2]
    )
    names = [name for name, _, _ in rows][::-1]
    values = [max(value, 0.1) for _, value, _ in rows][::-1]
    rates.barh(names, values, color=[color for _, _, color in rows][::-1])
    rates.set_xscale("log")
    rates.set_xlabel("per second (blue: the service, grey: references)")
    for y, value in enumerate(values):
        rates.annotate(f" {value:,.0f}", (value, y), va="center", fontsize=8)
    labels = [f"{row['scenario']} vs {row['against']}" for row in targets][::-1]
    scores = [row["score"] for row in targets][::-1]
    standing.barh(labels, scores, color=["tab:green" if s >= 1 else "tab:red" for s in scores])
    standing.axvline(1.0, color="black", linewidth=1)
    standing.set_xlim(0, max([1.0, *scores]) * 1.5)
    standing.set_xlabel("measured / target (>= 1: met)")
    for y, row in enumerate(targets[::-1]):
        standing.annotate(
            f" {row['value']:g} ({row['target']})", (row["score"], y), va="center", fontsize=8
        )
    machine = document["machine"]
    figure.suptitle(
        f"make bench, {document['when']}: {machine['cores']} cores ({machine['cpu']}),"
        f" {document['settings']['in_flight']} in flight, {document['settings']['seconds']:g} s each"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
