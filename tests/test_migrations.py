"""The migration runner: apply in order, no-op re-run, one winner under races, tamper refusal."""

import shutil
import threading
from pathlib import Path

import psycopg
import pytest

from shared.migrations import MIGRATIONS_ROOT, SERVICES, MigrationError, main, migrate
from wallet_service.admin import check_invariants


def applied_versions(url: str, service: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT version FROM {service}.schema_migrations ORDER BY version")
        return [version for (version,) in rows]


def test_every_service_migrates_an_empty_database(empty_database_url: str) -> None:
    for service in SERVICES:
        applied = migrate(empty_database_url, service)
        on_disk = sorted(path.name for path in (MIGRATIONS_ROOT / service).glob("*.sql"))
        assert applied == on_disk
        assert len(applied_versions(empty_database_url, service)) == len(on_disk)
    with psycopg.connect(empty_database_url) as conn:
        schemas = {row[0] for row in conn.execute("SELECT nspname FROM pg_namespace")}
    assert set(SERVICES) <= schemas


def test_the_command_without_arguments_migrates_every_service(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_database_url)  # as `make migrate` runs it
    assert main([]) == 0
    for service in SERVICES:
        on_disk = list((MIGRATIONS_ROOT / service).glob("*.sql"))
        assert len(applied_versions(empty_database_url, service)) == len(on_disk)
    assert main(["wallet"]) == 0
    with pytest.raises(SystemExit):
        main(["ledger"])


def test_running_again_applies_nothing(empty_database_url: str) -> None:
    migrate(empty_database_url, "wallet")
    assert migrate(empty_database_url, "wallet") == []


def test_concurrent_runners_apply_each_file_once(empty_database_url: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate(empty_database_url, "wallet"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Exactly one runner applied the files; the others found nothing to do.
    assert sorted(len(result) for result in results)[-1] > 0
    assert sum(1 for result in results if result) == 1


def copy_migrations(tmp_path: Path) -> Path:
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_ROOT / "wallet", root / "wallet")
    return root


def test_an_edited_applied_migration_is_refused(empty_database_url: str, tmp_path: Path) -> None:
    root = copy_migrations(tmp_path)
    migrate(empty_database_url, "wallet", root)
    first = sorted((root / "wallet").glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="was edited"):
        migrate(empty_database_url, "wallet", root)


def test_a_deleted_applied_migration_is_refused(empty_database_url: str, tmp_path: Path) -> None:
    root = copy_migrations(tmp_path)
    migrate(empty_database_url, "wallet", root)
    sorted((root / "wallet").glob("*.sql"))[0].unlink()
    with pytest.raises(MigrationError, match="missing"):
        migrate(empty_database_url, "wallet", root)


def test_a_failing_migration_leaves_nothing_behind(empty_database_url: str, tmp_path: Path) -> None:
    root = copy_migrations(tmp_path)
    (root / "wallet" / "9999_broken.sql").write_text(
        "CREATE TABLE wallet.half_done (id int);\nSELECT no_such_function();\n"
    )
    with pytest.raises(psycopg.Error):
        migrate(empty_database_url, "wallet", root)
    with psycopg.connect(empty_database_url) as conn:
        exists = conn.execute("SELECT to_regclass('wallet.half_done')").fetchone()
    assert exists == (None,)
    assert 9999 not in applied_versions(empty_database_url, "wallet")


def test_a_badly_named_file_is_refused(empty_database_url: str, tmp_path: Path) -> None:
    root = copy_migrations(tmp_path)
    (root / "wallet" / "add_things.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="expected a name"):
        migrate(empty_database_url, "wallet", root)


LEGACY_LEDGER = """
INSERT INTO wallet.wallets (id, user_id, currency, balance) VALUES
    ('00000000-0000-0000-0000-00000000000a', 'ada', 'EUR', 70),
    ('00000000-0000-0000-0000-00000000000b', 'bob', 'EUR', 0);
INSERT INTO wallet.transactions (id, type, amount, currency, source_wallet_id,
    destination_wallet_id, idempotency_key, requested_by, created_at) VALUES
    ('00000000-0000-0000-0000-000000000001', 'credit', 100, 'EUR', NULL,
     '00000000-0000-0000-0000-00000000000a', 'pay-1', 'payments', now() - interval '3 days'),
    ('00000000-0000-0000-0000-000000000002', 'debit', 20, 'EUR',
     '00000000-0000-0000-0000-00000000000a', NULL, 'coffee', 'ada', now() - interval '2 days'),
    -- The same key applied again after its record was cleaned up: possible before 0003.
    ('00000000-0000-0000-0000-000000000003', 'debit', 10, 'EUR',
     '00000000-0000-0000-0000-00000000000a', NULL, 'coffee', 'ada', now() - interval '1 hour');
INSERT INTO wallet.ledger_entries (wallet_id, transaction_id, type, amount, balance_after)
VALUES ('00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-000000000001',
        'credit', 100, 100),
       ('00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-000000000002',
        'debit', -20, 80),
       ('00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-000000000003',
        'debit', -10, 70);
INSERT INTO wallet.idempotency_keys (principal, key, request_hash, status, transaction_id,
    balances_after) VALUES ('ada', 'coffee', 'hash-of-the-latest', 'succeeded',
    '00000000-0000-0000-0000-000000000003', '{"00000000-0000-0000-0000-00000000000a": 70}');
"""


async def test_permanent_keys_and_sequences_migrate_existing_ledgers(
    empty_database_url: str, tmp_path: Path
) -> None:
    root = copy_migrations(tmp_path)
    for later in sorted((root / "wallet").glob("*.sql"))[2:]:
        later.unlink()
    migrate(empty_database_url, "wallet", root)  # the schema before 0003
    with psycopg.connect(empty_database_url) as conn:
        conn.execute(LEGACY_LEDGER)
    migrate(empty_database_url, "wallet")

    with psycopg.connect(empty_database_url) as conn:
        entries = conn.execute(
            "SELECT transaction_id::text, sequence FROM wallet.ledger_entries ORDER BY id"
        ).fetchall()
        assert [sequence for _, sequence in entries] == [1, 2, 3]
        keys = conn.execute(
            "SELECT key_occurrence, request_hash FROM wallet.transactions"
            " WHERE idempotency_key = 'coffee' ORDER BY created_at"
        ).fetchall()
        assert keys == [(1, None), (2, "hash-of-the-latest")]
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO wallet.transactions (id, type, amount, currency, source_wallet_id,"
                " idempotency_key, requested_by) VALUES (gen_random_uuid(), 'debit', 1, 'EUR',"
                " '00000000-0000-0000-0000-00000000000a', 'coffee', 'ada')"
            )
    ok, report = await check_invariants(empty_database_url)
    assert ok, report
