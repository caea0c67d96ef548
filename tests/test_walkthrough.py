"""The documents' grpcurl sessions run for real: docs/walkthrough.sh against real servers, and
every command those documents show is one the script runs, so the two cannot drift apart."""

import re

from tests.programs import ROOT, run_program
from tests.service_pair import service_pair

SCRIPT = ROOT / "docs" / "walkthrough.sh"
# Each document's session: from the first marker to the second.
SESSIONS = {
    "README.md": ("## Try it with grpcurl", "## The auth service"),
    "docs/holds-and-refunds.md": ("## A checkout, step by step", "## The rules"),
    "docs/batches-events-status.md": ("# Batches", "## The rules"),
}
_CODE_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
# `G=... AUTH=localhost:50051`, `HOLD=2c78eb38-...`: settings the reader types, not steps.
_PLAIN_ASSIGNMENTS = re.compile(r"([A-Z_]+=[^\s$]*\s*)+")


def without_comment(command: str) -> str:
    """The command up to a `#` that starts a shell comment (outside quotes, after a blank)."""
    quote, i = "", 0
    while i < len(command):
        char = command[i]
        if char == "\\" and quote != "'":
            i += 2  # an escaped character, quotes included
            continue
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i]
        i += 1
    return command


def normalised(shell: str) -> str:
    """Continuation lines joined and blanks collapsed, as bash reads them."""
    return re.sub(r"\s+", " ", shell.replace("\\\n", " ")).strip()


def commands_in(block_language: str, block: str) -> list[str]:
    """The commands of a ```sh block (every line), or of a ```console block (`$ ` lines)."""
    commands, current = [], ""
    for line in block.splitlines():
        if block_language == "console" and not current:
            if not line.startswith("$ "):
                continue  # the output
            line = line[2:]
        current += line + "\n"
        if not line.endswith("\\"):
            command = normalised(without_comment(current))
            current = ""
            if command:
                commands.append(command)
    return commands


def documented_commands(document: str) -> list[str]:
    text = (ROOT / document).read_text()
    start, end = SESSIONS[document]
    session = text[text.index(start) : text.index(end)]
    commands = []
    for language, block in _CODE_BLOCK.findall(session):
        if language in ("sh", "console"):
            commands += commands_in(language, block)
    return [c for c in commands if not _PLAIN_ASSIGNMENTS.fullmatch(c)]


def test_every_command_of_the_documented_sessions_is_in_the_walkthrough() -> None:
    script = normalised(SCRIPT.read_text())
    for document in SESSIONS:
        commands = documented_commands(document)
        assert len(commands) >= 5, f"{document}: its session was not found"
        missing = [command for command in commands if command not in script]
        assert not missing, f"{document} shows commands that docs/walkthrough.sh does not run"


def test_the_comparison_sees_a_changed_command() -> None:
    """A document that shows another amount than the script runs is caught."""
    script = normalised(SCRIPT.read_text())
    command = next(c for c in documented_commands("README.md") if "coffee" in c)
    assert command in script
    assert command.replace("2500", "2600") not in script


async def test_the_walkthrough_runs_against_real_servers(database_server_url: str) -> None:
    # Its own servers: a fresh database (the balances it checks are its own) and frequent
    # heartbeats, which tell the script when a WatchEvents stream has started.
    async with service_pair(database_server_url, wallet={"watch_heartbeat_seconds": 0.2}) as pair:
        result = await run_program(
            ["bash", str(SCRIPT)],
            env={
                "AUTH_PORT": str(pair.auth.port),
                "WALLET_PORT": str(pair.wallet.port),
                "DATABASE_URL": pair.database_url,
            },
        )
    assert result.returncode == 0, result.output
    assert re.search(r"^walkthrough: \d+ checks passed$", result.output, re.MULTILINE)
