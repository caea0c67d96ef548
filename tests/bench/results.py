"""What one measurement gives: a scenario of the service, or a reference beside it."""

import math
from dataclasses import dataclass, field
from typing import Any

from tests.bench.cpu import Usage


def percentile(ordered: list[float], fraction: float) -> float | None:
    """The value below which `fraction` of the sorted values lie (nearest rank)."""
    if not ordered:
        return None
    rank = max(math.ceil(fraction * len(ordered)) - 1, 0)
    return ordered[rank]


@dataclass
class Measurement:
    name: str
    seconds: float  # the measured window
    done: int  # calls (or pairs, or transactions, or checks) that succeeded in the window
    latencies: list[float]  # seconds, of those
    errors: dict[str, int] = field(default_factory=dict)  # "CODE REASON" -> count
    in_flight: int = 0
    client_cpu_seconds: float | None = None  # the load client's, in the window
    cpu: dict[str, Usage] = field(default_factory=dict)  # services and PostgreSQL
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def latency_ms(self, fraction: float) -> float | None:
        value = percentile(sorted(self.latencies), fraction)
        return None if value is None else value * 1000

    @property
    def client_cpu_us_per_call(self) -> float | None:
        calls = self.done + self.error_count
        if self.client_cpu_seconds is None or not calls:
            return None
        return self.client_cpu_seconds / calls * 1e6

    @property
    def neighbours_cpu_percent(self) -> float | None:
        """What the machine's CPU did beside the measured processes (services, PostgreSQL, the
        load client or pgbench): other programs on the machine, the noise of this run."""
        machine = self.cpu.get("machine")
        if machine is None:
            return None
        ours = sum(usage.percent for name, usage in self.cpu.items() if name != "machine")
        if self.client_cpu_seconds is not None and self.seconds:
            ours += 100 * self.client_cpu_seconds / self.seconds
        return max(machine.percent - ours, 0.0)

    def as_json(self) -> dict[str, Any]:
        p50, p99 = self.latency_ms(0.5), self.latency_ms(0.99)
        cpu_per_call = self.client_cpu_us_per_call
        return {
            "name": self.name,
            "rate_per_second": round(self.rate, 1),
            "done": self.done,
            "seconds": self.seconds,
            "in_flight": self.in_flight,
            "p50_ms": None if p50 is None else round(p50, 3),
            "p99_ms": None if p99 is None else round(p99, 3),
            "errors": self.errors,
            "client_cpu_us_per_call": None if cpu_per_call is None else round(cpu_per_call),
            "cpu_percent": {name: usage.as_json() for name, usage in self.cpu.items()},
            "cpu_ms_per_call": {
                name: round(usage.percent * 10 / self.rate, 3)
                for name, usage in self.cpu.items()
                if self.rate and name != "machine"
            },
            "neighbours_cpu_percent": None
            if self.neighbours_cpu_percent is None
            else round(self.neighbours_cpu_percent),
            "notes": self.notes,
        }
