"""CPU time of the processes under test, read from /proc (Linux; psutil is not needed).

A `Watched` group is either a process group (a service started by the bench: its supervisor
and its workers share one) or a process and its children (the PostgreSQL postmaster and its
backends). `sample()` reads /proc once; the difference of two samples over the seconds
between them is each group's CPU use, where 100% is one core, and the whole machine's
(`machine`: what the bench's processes and any neighbour used of all the cores).
"""

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Watched:
    name: str  # "wallet", "auth", "postgres"
    pid: int
    children: bool = False  # the process and its children, rather than its process group


@dataclass(frozen=True)
class _Process:
    pid: int
    parent: int
    group: int
    command: str
    cpu_seconds: float


@dataclass
class Sample:
    at: float  # time.monotonic()
    machine: float = 0.0  # CPU seconds every process of the machine has used (/proc/stat)
    # group name -> {pid: (command, cpu seconds)}
    groups: dict[str, dict[int, tuple[str, float]]] = field(default_factory=dict)


def _processes() -> list[_Process]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = Path(entry.path, "stat").read_text()
            # The command is in parentheses and may hold spaces: fields follow the last ")".
            command = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])  # utime + stime
            found.append(
                _Process(
                    int(entry.name),
                    int(fields[1]),
                    int(fields[2]),
                    command,
                    ticks / TICKS_PER_SECOND,
                )
            )
    return found


def children(pid: int) -> list[int]:
    return [process.pid for process in _processes() if process.parent == pid]


def _belongs(process: _Process, group: Watched) -> bool:
    if group.children:
        return group.pid in (process.pid, process.parent)
    return process.group == group.pid


def _machine_busy() -> float:
    """CPU seconds of the whole machine, idle and I/O wait left out (its neighbours' too)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        guests = sum(fields[8:10])  # already counted in user and nice
        return (sum(fields) - idle - guests) / TICKS_PER_SECOND
    return 0.0


def sample(watched: list[Watched]) -> Sample:
    result = Sample(time.monotonic(), _machine_busy())
    processes = _processes()
    for group in watched:
        members = [p for p in processes if _belongs(p, group)]
        result.groups[group.name] = {p.pid: (p.command, p.cpu_seconds) for p in members}
    return result


@dataclass(frozen=True)
class Usage:
    """One group's CPU over an interval: in all, and per process (100 = one core)."""

    percent: float
    processes: dict[str, float]  # "<command> <pid>" -> percent

    def as_json(self) -> dict[str, object]:
        return {"percent": round(self.percent, 1), "processes": self.processes}


def usage(before: Sample, after: Sample) -> dict[str, Usage]:
    """CPU use of each group between two samples. A process that ended in between is not
    counted (its time is gone from /proc), one that started is counted from zero."""
    seconds = max(after.at - before.at, 1e-9)
    result = {}
    for name, now in after.groups.items():
        then = before.groups.get(name, {})
        per_process = {
            f"{command} {pid}": round(100 * (cpu - then.get(pid, (command, 0.0))[1]) / seconds, 1)
            for pid, (command, cpu) in now.items()
        }
        busy = {key: percent for key, percent in per_process.items() if percent >= 0.5}
        result[name] = Usage(sum(per_process.values()), busy)
    if after.machine:
        result["machine"] = Usage(100 * (after.machine - before.machine) / seconds, {})
    return result
