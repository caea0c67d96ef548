"""Programs run by tests as the user would (node, bash scripts), beside the session's servers.

They run as asyncio subprocesses: the servers live in the test's event loop, and a blocking
`subprocess.run` would stop them from answering."""

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_CLIENT = ROOT / "clients" / "node"
# Set by an enclosing `make test`; a `make` run by a program must not inherit them.
_MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


@dataclass
class Finished:
    returncode: int
    output: str  # stdout and stderr, interleaved


async def run_program(
    argv: Sequence[str],
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    seconds: float = 120,
) -> Finished:
    """Runs a program to its end (killed after `seconds`) and returns its exit code and output."""
    environment = {k: v for k, v in os.environ.items() if k not in _MAKE_VARIABLES}
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env={**environment, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        return Finished(-1, output.decode() + f"\n(killed after {seconds} s)")
    assert process.returncode is not None
    return Finished(process.returncode, output.decode())
