"""What `make bench` measures: the service's scenarios, the references they are compared with
in the same run, and the targets of issue 11. The calls themselves are in load.py, the
references in references.py."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    name: str
    description: str


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    # References this scenario is shown against, the first on its own row of the table.
    compared_with: tuple[str, ...] = ()
    # Issue 11's targets: a rate of at least `ratio` times `reference`'s, a p99 below.
    target_reference: str | None = None
    target_ratio: float | None = None
    target_p99_ms: float | None = None
    # Fewer calls in flight than BENCH_IN_FLIGHT, where more would only queue (Login: bcrypt).
    max_in_flight: int | None = None
    unit: str = "calls"


SCENARIOS = {
    scenario.name: scenario
    for scenario in [
        Scenario(
            "credit-uniform",
            "Credit by the payments service (wallet:credit) to a random wallet of BENCH_WALLETS,"
            " a new idempotency key each call",
            ("textbook-credit-uniform", "service-credit-uniform"),
            target_reference="textbook-credit-uniform",
            target_ratio=0.25,
            target_p99_ms=60,
        ),
        Scenario(
            "credit-hot",
            "Credit by the payments service, every call to one wallet",
            ("textbook-credit-hot", "service-credit-hot"),
            target_reference="textbook-credit-hot",
            target_ratio=1.5,
        ),
        Scenario(
            "debit-uniform",
            "Debit by each wallet's owner of its own wallet, uniformly",
            ("textbook-credit-uniform",),
        ),
        Scenario(
            "debit-hot",
            "Debit by the owner of one wallet, every call",
            ("textbook-credit-hot",),
            target_reference="textbook-credit-hot",
            target_ratio=1.5,
        ),
        Scenario(
            "transfer-uniform",
            "Transfer by an owner from its wallet to another random wallet",
            ("textbook-transfer-uniform",),
            target_reference="textbook-transfer-uniform",
            target_ratio=0.2,
        ),
        Scenario(
            "transfer-hot",
            "Transfer out of one wallet, by its owner, to random wallets",
            ("textbook-transfer-hot",),
        ),
        Scenario(
            "hold-capture",
            "CreateHold then CaptureHold of the whole amount, by the owner; counted in pairs",
            unit="pairs",
        ),
        Scenario(
            "get-wallet",
            "GetWallet by the owner, uniformly",
            ("textbook-credit-uniform", "textbook-get-wallet"),
            target_reference="textbook-credit-uniform",
            target_ratio=0.35,
        ),
        Scenario(
            "list-transactions",
            "ListTransactions, the first page (20 entries) of a wallet with 30",
            ("textbook-get-wallet",),
        ),
        Scenario(
            "login",
            "Login with email and password (bcrypt at the service's BCRYPT_COST), 16 in flight",
            ("bcrypt",),
            target_reference="bcrypt",
            target_ratio=0.8,
            max_in_flight=16,
        ),
    ]
}

REFERENCES = {
    reference.name: reference
    for reference in [
        Reference(
            "textbook-credit-uniform",
            "pgbench: BEGIN; INSERT key; SELECT wallet FOR UPDATE; UPDATE balance;"
            " INSERT ledger row; COMMIT (six round trips), random wallet",
        ),
        Reference("textbook-credit-hot", "pgbench: the textbook credit, always one wallet"),
        Reference(
            "service-credit-uniform",
            "pgbench: the service's own SQL for one credit (two pipelined round trips) on the"
            " migrated schema, random wallet",
        ),
        Reference("service-credit-hot", "pgbench: the service's SQL for a credit, one wallet"),
        Reference(
            "textbook-transfer-uniform",
            "pgbench: BEGIN; INSERT key; SELECT both wallets FOR UPDATE in id order;"
            " two UPDATEs; INSERT two ledger rows; COMMIT, random pair",
        ),
        Reference(
            "textbook-transfer-hot", "pgbench: the textbook transfer, always out of one wallet"
        ),
        Reference("textbook-get-wallet", "pgbench: SELECT a wallet by primary key"),
        Reference(
            "bcrypt",
            "raw bcrypt checks at the service's cost, one process per core, in this run",
        ),
    ]
}
