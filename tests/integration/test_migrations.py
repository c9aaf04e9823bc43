"""``apply_migrations`` on the real ClickHouse: in order, once each, edits refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from clickhouse_driver import Client

from streams.clickhouse.migrations import MigrationError, apply_migrations
from streams.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def database(stack: Settings, request: pytest.FixtureRequest) -> Client:
    """A client on an empty database of its own, dropped afterwards."""
    name = f"migrations_{request.node.name}"[:60]
    server = Client(**{**stack.clickhouse_params(), "database": ""})
    server.execute(f"DROP DATABASE IF EXISTS {name}")
    server.execute(f"CREATE DATABASE {name}")
    yield Client(**{**stack.clickhouse_params(), "database": name})
    server.execute(f"DROP DATABASE IF EXISTS {name}")


def _write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


FIRST = """-- two statements, split at the ';' ending a line
CREATE TABLE IF NOT EXISTS cdr (cdr_id String, note String) ENGINE = MergeTree ORDER BY cdr_id;
INSERT INTO cdr SELECT 'a', 'x;y';
"""
SECOND = "ALTER TABLE cdr ADD COLUMN billsec UInt32;\n"


def test_migrations_apply_in_order_once_each(database: Client, tmp_path: Path) -> None:
    # Named out of order on purpose: versions decide, not the listing.
    folder = _write(tmp_path / "m", {"0002_billsec.sql": SECOND, "0001_cdr.sql": FIRST})
    assert apply_migrations(database, folder) == ["0001_cdr.sql", "0002_billsec.sql"]
    assert apply_migrations(database, folder) == []
    assert database.execute("SELECT cdr_id, note, billsec FROM cdr") == [("a", "x;y", 0)]
    assert database.execute("SELECT version, name FROM schema_migrations ORDER BY version") == [
        (1, "cdr"),
        (2, "billsec"),
    ]


def test_a_new_file_is_applied_on_the_next_run(database: Client, tmp_path: Path) -> None:
    folder = _write(tmp_path / "m", {"0001_cdr.sql": FIRST})
    apply_migrations(database, folder)
    _write(folder, {"0002_billsec.sql": SECOND})
    assert apply_migrations(database, folder) == ["0002_billsec.sql"]


def test_an_applied_file_that_changed_is_refused(database: Client, tmp_path: Path) -> None:
    folder = _write(tmp_path / "m", {"0001_cdr.sql": FIRST})
    apply_migrations(database, folder)
    _write(folder, {"0001_cdr.sql": FIRST + "-- edited\n"})
    with pytest.raises(MigrationError, match="0001_cdr.sql: this migration was applied already"):
        apply_migrations(database, folder)


def test_a_failing_statement_names_the_file_and_is_not_recorded(
    database: Client, tmp_path: Path
) -> None:
    folder = _write(tmp_path / "m", {"0001_bad.sql": "CREATE TABLE t (x Nope) ENGINE = Memory;\n"})
    with pytest.raises(MigrationError, match=r"0001_bad.sql: statement 1 failed"):
        apply_migrations(database, folder)
    assert database.execute("SELECT count() FROM schema_migrations") == [(0,)]


def test_a_misnamed_file_is_refused(database: Client, tmp_path: Path) -> None:
    folder = _write(tmp_path / "m", {"1_cdr.sql": FIRST})
    with pytest.raises(MigrationError, match="must be named NNNN_name.sql"):
        apply_migrations(database, folder)


def test_an_inline_insert_values_is_refused_before_anything_runs(
    database: Client, tmp_path: Path
) -> None:
    # It would hang: the server waits for a data block that clickhouse-driver never sends.
    inline = FIRST + "INSERT INTO cdr (cdr_id) VALUES ('b');\n"
    folder = _write(tmp_path / "m", {"0001_cdr.sql": inline})
    with pytest.raises(MigrationError, match="statement 3 is an INSERT ... VALUES"):
        apply_migrations(database, folder)
    assert ("cdr",) not in database.execute("SHOW TABLES")
