"""The private PostgreSQL of tests/private_postgres.py: it starts, restarts with its data,
reconfigures, ends connections, and leaves no process or folder behind."""

import psycopg
import pytest

from tests.private_postgres import is_running, private_postgres, processes_of


def scalar(url: str, query: str) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


def test_a_private_server_restarts_with_its_data_and_leaves_nothing_behind() -> None:
    with private_postgres() as server:
        url = server.create_database("bank")
        assert url.startswith(f"postgresql://postgres@127.0.0.1:{server.port}/")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (1)")
        assert scalar(server.url("bank", unix_socket=True), "SELECT count(*) FROM kept") == 1

        first_pid = server.pid
        server.restart(mode="fast")
        server.restart(mode="immediate")  # a crash: recovery replays the WAL
        assert server.pid not in (None, first_pid)
        assert scalar(url, "SELECT count(*) FROM kept") == 1

        server.stop()
        assert server.pid is None
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
        server.start()
        assert scalar(url, "SELECT count(*) FROM kept") == 1
        folder, postmaster = server.folder, server.pid
    assert not folder.exists()
    assert postmaster is not None and not is_running(postmaster)
    assert processes_of(folder) == []


def test_settings_apply_on_reload_and_backends_of_one_database_can_be_ended() -> None:
    with private_postgres() as server:
        bank = server.create_database("bank")
        other = server.create_database("other")
        server.set_config("synchronous_standby_names", "nobody")
        assert scalar(bank, "SHOW synchronous_standby_names") == "nobody"
        server.set_config("synchronous_standby_names", None)
        assert scalar(bank, "SHOW synchronous_standby_names") == ""

        with (
            psycopg.connect(bank, autocommit=True) as victim,
            psycopg.connect(bank, autocommit=True, application_name="spared") as spared,
            psycopg.connect(other, autocommit=True) as bystander,
        ):
            assert server.terminate_backends("bank", sparing="spared") == 1
            with pytest.raises(psycopg.OperationalError):
                victim.execute("SELECT 1")
            spared.execute("SELECT 1")
            bystander.execute("SELECT 1")
