"""The ClickHouse sink and ``export`` on the real server (issue 4, items 5 and 7).

Each test gets a database of its own with every migration applied, so tests do not see
each other's rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from clickhouse_driver import Client
from typer import Typer
from typer.testing import CliRunner

from rating import Catalog, RatingResult, RatingState, rate
from schemas.cdr_csv import parse_csv
from streams.cli.export import export as export_command
from streams.clickhouse import insert as sink_clickhouse
from streams.clickhouse.insert import (
    ClickHouseUnavailable,
    RetryPolicy,
    connect,
    insert_alerts,
    insert_rated,
    insert_rejected,
)
from streams.clickhouse.migrations import MIGRATIONS_DIR, apply_migrations, read_migrations
from streams.clickhouse.tables import RATED, TABLES
from streams.finance.export import export
from streams.offline.compare import compare_outputs
from streams.offline.rate import rate_file
from streams.settings import Settings
from streams.stack.servers import free_ports
from streams.stack.status import status
from tariffs import load_tariffs
from tests.integration.pipeline import stack_url
from tests.conftest import VECTORS

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(budget_s=10.0, first_delay_s=0.1, max_delay_s=0.5)


@pytest.fixture
def database(stack: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings naming a fresh database of the test stack's ClickHouse, schema applied."""
    name = f"sink_{request.node.name}".replace("[", "_").replace("]", "")[:60]
    params = stack.clickhouse_params()
    server = Client(**{**params, "database": ""})
    server.execute(f"DROP DATABASE IF EXISTS {name}")
    server.execute(f"CREATE DATABASE {name}")
    # The migration runner records its files with a row-wise insert: not a numpy client.
    apply_migrations(Client(**{**params, "database": name}))
    yield Settings(
        kafka_bootstrap=",".join(stack.kafka_servers()),
        clickhouse_url=stack_url(stack, name),
        state_dir=stack.state_dir,
    )
    server.execute(f"DROP DATABASE IF EXISTS {name}")


def _rate(vectors: Path, source: str = "cdrs.csv", ingest_id: str = "ingest-1") -> RatingResult:
    catalog = Catalog.from_tariffs(load_tariffs(vectors / "plans", vectors / "accounts.toml"))
    batch = parse_csv((vectors / "cdrs.csv").read_bytes())
    # As ingest sends them: the engine carries these columns through to its outputs.
    batch = batch.with_columns(source=pl.lit(source), ingest_id=pl.lit(ingest_id))
    return rate(batch, RatingState.empty(), catalog)


def _insert(client: Client, result: RatingResult) -> None:
    insert_rated(client, result.rated)
    insert_rejected(client, result.rejected)
    insert_alerts(client, result.alerts)


def _rows(settings: Settings, query: str) -> list[tuple[object, ...]]:
    """The answer to ``query`` as rows of Python values (the sink's client answers numpy)."""
    return Client(**settings.clickhouse_params()).execute(query)


def _stored_rows(settings: Settings, table: str) -> int:
    """Rows in the table's parts, copies not yet collapsed included."""
    return _rows(settings, f"SELECT count() FROM {table}")[0][0]


def test_every_vector_set_replayed_exports_the_expected_files(
    database: Settings, vector_set: Path, tmp_path: Path
) -> None:
    client = connect(database)
    result = _rate(vector_set)
    _insert(client, result)
    _insert(client, result)  # a replay: Kafka delivers at least once
    assert _stored_rows(database, "rated_calls") == 2 * result.rated.height

    counts = export(client, tmp_path)

    assert counts == {
        "rated": result.rated.height,
        "rejected": result.rejected.height,
        "alerts": result.alerts.height,
    }
    compared = compare_outputs(vector_set / "expected", tmp_path)
    assert compared.ok, compared.report()


def test_a_large_frame_is_sent_over_two_connections_and_lands_once(
    database: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sink_clickhouse, "PARALLEL_MIN_ROWS", 100)
    vectors = VECTORS / "mixed"
    client = connect(database)
    result = _rate(vectors)
    _insert(client, result)
    _insert(client, result)

    assert client.sibling().connection.connected
    export(client, tmp_path)
    compared = compare_outputs(vectors / "expected", tmp_path)
    assert compared.ok, compared.report()


def test_export_writes_the_files_of_the_offline_rate_command(database: Settings, tmp_path: Path) -> None:
    vectors = VECTORS / "mixed"
    catalog = Catalog.from_tariffs(load_tariffs(vectors / "plans", vectors / "accounts.toml"))
    rate_file(vectors / "cdrs.csv", catalog, tmp_path / "offline")
    client = connect(database)
    _insert(client, _rate(vectors))

    export(client, tmp_path / "export")

    offline, exported = tmp_path / "offline", tmp_path / "export"
    for name in ("rated.csv", "alerts.csv"):
        assert (exported / name).read_text() == (offline / name).read_text(), name
    rejected = pl.read_csv(exported / "rejected.csv", infer_schema=False)
    assert rejected.columns[:2] == ["file", "line"]
    assert set(rejected.get_column("file")) == {"cdrs.csv"}
    assert rejected.drop("file").equals(pl.read_csv(offline / "rejected.csv", infer_schema=False))


def test_an_empty_database_exports_headed_empty_files(database: Settings, tmp_path: Path) -> None:
    assert export(connect(database), tmp_path) == {"rated": 0, "rejected": 0, "alerts": 0}
    assert (tmp_path / "rejected.csv").read_text() == "file,line,cdr_id,reason,detail,account_id\n"
    assert (tmp_path / "alerts.csv").read_text() == "account_id,kind,cdr_id,balance,line,local_day\n"


def test_a_rejection_ingested_again_under_a_new_ingest_id_is_a_second_row(
    database: Settings, tmp_path: Path
) -> None:
    client = connect(database)
    rejected = _rate(VECTORS / "basic").rejected.head(1)
    insert_rejected(client, rejected)
    insert_rejected(client, rejected)  # replayed: collapses
    insert_rejected(client, rejected.with_columns(ingest_id=pl.lit("ingest-2")))  # --force

    assert _rows(database, "SELECT ingest_id FROM rejected_cdrs FINAL ORDER BY ingest_id") == [
        ("ingest-1",),
        ("ingest-2",),
    ]
    assert export(client, tmp_path)["rejected"] == 2


def test_a_rejection_from_no_file_is_named_by_its_kafka_position(database: Settings) -> None:
    client = connect(database)
    garbage = pl.DataFrame(
        {"line": [0, 0], "cdr_id": ["", ""], "reason": ["malformed"] * 2, "detail": ["not a CDR chunk"] * 2,
         "account_id": [None, None], "topic": ["cdr.raw"] * 2, "partition": [1, 1], "offset": [7, 8]},
        schema_overrides={"account_id": pl.String},
    )
    insert_rejected(client, garbage)
    insert_rejected(client, garbage)
    assert _rows(database, "SELECT source FROM rejected_cdrs FINAL ORDER BY source") == [
        ("cdr.raw[1]@7",),
        ("cdr.raw[1]@8",),
    ]


def test_a_rerating_with_a_higher_version_replaces_the_call(database: Settings) -> None:
    client = connect(database)
    rated = _rate(VECTORS / "basic").rated.filter(pl.col("status") == "rated").head(1)
    insert_rated(client, rated)
    insert_rated(client, rated.with_columns(amount=pl.col("amount") + 1, version=pl.lit(2)))
    insert_rated(client, rated)  # a late replay of the first rating does not win

    assert _rows(database, "SELECT amount, version, event_id FROM rated_calls FINAL") == [
        (rated.item(0, "amount") + 1, 2, f"{rated.item(0, 'account_id')}/{rated.item(0, 'cdr_id')}")
    ]


class _LateProxy:
    """A TCP forwarder to ``target`` that starts listening only after ``delay_s``:
    ClickHouse "coming back" at the address a client was given."""

    def __init__(self, port: int, target: tuple[str, int], delay_s: float) -> None:
        self.port, self.target = port, target
        self.timer = threading.Timer(delay_s, self._listen)
        self.server: socketserver.ThreadingTCPServer | None = None

    def __enter__(self) -> _LateProxy:
        self.timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.timer.cancel()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def _listen(self) -> None:
        target = self.target

        class Forward(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(target)
                pump = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
                pump.start()
                _pipe(self.request, upstream)
                pump.join()
                upstream.close()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Forward)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(1 << 16):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def test_the_insert_retries_until_clickhouse_answers(
    database: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    params = database.clickhouse_params()
    (port,) = free_ports(1)
    late = Settings(clickhouse_url=f"clickhouse://default@127.0.0.1:{port}/{params['database']}",
                    clickhouse_password=params["password"])
    rated = _rate(VECTORS / "basic").rated
    caplog.set_level(logging.WARNING, logger="streams.clickhouse.insert")

    client = connect(late, connect_timeout=1)
    with _LateProxy(port, (params["host"], params["port"]), delay_s=1.0):
        assert insert_rated(client, rated, retry=FAST_RETRY) == rated.height
        client.disconnect()

    retries = [r for r in caplog.records if "insert of 42 rows into rated_calls" in r.getMessage()]
    assert retries, "each retry is logged"
    assert _stored_rows(database, "rated_calls") == rated.height


def test_the_insert_gives_up_when_the_budget_runs_out(
    database: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    (port,) = free_ports(1)  # nothing listens there
    nowhere = Settings(clickhouse_url=f"clickhouse://default@127.0.0.1:{port}/cdrflow")
    caplog.set_level(logging.WARNING, logger="streams.clickhouse.insert")
    with pytest.raises(ClickHouseUnavailable, match=rf"127.0.0.1:{port} did not answer within 1 s"):
        insert_alerts(
            connect(nowhere, connect_timeout=1),
            _rate(VECTORS / "basic").alerts,
            retry=RetryPolicy(budget_s=1.0, first_delay_s=0.1, max_delay_s=0.2),
        )
    assert len(caplog.records) >= 2


def test_a_wrong_insert_fails_at_once_without_retrying(
    database: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect(database)
    client.execute("DROP TABLE alerts")
    caplog.set_level(logging.WARNING, logger="streams.clickhouse.insert")
    with pytest.raises(Exception, match="alerts"):
        insert_alerts(client, _rate(VECTORS / "basic").alerts, retry=FAST_RETRY)
    assert caplog.records == []


def test_the_export_command_prints_the_counts(database: Settings, tmp_path: Path) -> None:
    _insert(connect(database), _rate(VECTORS / "basic"))
    app = Typer()
    app.command()(export_command)
    env = {"CDRFLOW_CLICKHOUSE_URL": database.clickhouse_url, "CDRFLOW_KAFKA_BOOTSTRAP": ""}

    result = CliRunner().invoke(app, ["--out", str(tmp_path), "--json"], env=env)

    assert result.exit_code == 0, result.output
    assert {k: v for k, v in json.loads(result.stdout).items() if k != "seconds"} == {
        "out": str(tmp_path),
        "rated": 42,
        "rejected": 15,
        "alerts": 8,
    }


def test_the_export_command_says_when_clickhouse_does_not_answer(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    app = Typer()
    app.command()(export_command)
    env = {"CDRFLOW_CLICKHOUSE_URL": f"clickhouse://default@127.0.0.1:{port}/cdrflow"}
    result = CliRunner().invoke(app, ["--out", str(tmp_path)], env=env)
    assert result.exit_code == 1
    assert "does not answer" in result.output and "Traceback" not in result.output


def test_status_counts_rejects_by_reason(database: Settings) -> None:
    result = _rate(VECTORS / "basic")
    insert_rejected(connect(database), result.rejected)
    insert_rejected(connect(database), result.rejected)
    expected = result.rejected.get_column("reason").value_counts().rows()
    assert status(database)["rejects_by_reason"] == dict(sorted(expected))


# ---------------------------------------------------------------- current ClickHouse


class _ChdbClient:
    """Just enough of ``clickhouse_driver.Client`` for ``apply_migrations``, over chdb."""

    def __init__(self, session: object) -> None:
        self.session = session

    def execute(self, query: str, params: list[tuple[object, ...]] | None = None) -> list[tuple[object, ...]]:
        if params is not None:  # the runner's record of an applied file
            query += " " + ", ".join("(" + ", ".join(map(_literal, row)) + ")" for row in params)
        answer = self.session.query(query, "JSONCompact").bytes()
        return [tuple(row) for row in json.loads(answer)["data"]] if answer else []


def _literal(value: object) -> str:
    if isinstance(value, int):
        return str(value)
    text = value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _columns(client: Client | _ChdbClient, database: str) -> dict[str, list[tuple[str, str]]]:
    # In the order of the table definitions (no ORDER BY: 18.16 has no `position`).
    rows = client.execute(
        f"SELECT table, name, type FROM system.columns WHERE database = '{database}' "
        f"AND table IN ({', '.join(repr(t) for t in TABLES)})"
    )
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, name, column_type in rows:
        tables.setdefault(table, []).append((name, column_type))
    return tables


def test_every_migration_applies_on_current_clickhouse_as_on_the_server(database: Settings) -> None:
    chdb_session = pytest.importorskip("chdb.session")
    session = chdb_session.Session()
    try:
        on_chdb = _ChdbClient(session)
        applied = apply_migrations(on_chdb)  # type: ignore[arg-type]
        assert applied == [migration.path.name for migration in read_migrations(MIGRATIONS_DIR)]
        assert apply_migrations(on_chdb) == []  # type: ignore[arg-type]

        server = Client(**database.clickhouse_params())
        assert _columns(on_chdb, "default") == _columns(server, database.clickhouse_params()["database"])

        # Replays collapse there too, and the highest version wins.
        for amount, version in ((100, 0), (100, 0), (250, 1), (100, 0)):
            on_chdb.execute(
                "INSERT INTO rated_calls (account_id, cdr_id, amount, charge_time, local_day, version) "
                f"SELECT 'A1', 'c1', {amount}, toDateTime('2026-03-01 00:00:00', 'UTC'), "
                f"toDate('2026-03-01'), {version}"
            )
        assert on_chdb.execute("SELECT toString(count()), toString(sum(amount)) FROM rated_calls FINAL") == [
            ("1", "250")
        ]
    finally:
        session.close()


def test_the_sink_tables_match_the_migrated_tables(database: Settings) -> None:
    server = Client(**database.clickhouse_params())
    stored = _columns(server, database.clickhouse_params()["database"])
    for name, table in TABLES.items():
        columns = [column for column, _ in stored[name]]
        expected = [*table.schema, *table.micros.values(), *table.optional, *table.server_filled]
        assert sorted(columns) == sorted(expected), name
    assert dict(stored[RATED.name])["daily_cap"] == "Nullable(Int64)"


# ---------------------------------------------------------------- corrections (issue 15)


def test_export_leaves_out_rejections_a_correction_rated_and_alerts_it_cancelled(
    database: Settings, tmp_path: Path
) -> None:
    result = _rate(VECTORS / "basic")
    client = connect(database)
    _insert(client, result)
    late = result.rejected.filter(pl.col("reason") == "duplicate").head(1)
    assert late.height == 1
    # A correction rated that line (a late call of its period, say), and took an alert back.
    rated_now = result.rated.head(1).with_columns(
        cdr_id=pl.lit("rated-now"), line=late.get_column("line"), source=pl.lit("cdrs.csv"),
        ingest_id=pl.lit("ingest-1"), version=pl.lit(7, dtype=pl.UInt64), correction_id=pl.lit("00112233445566aa"),
    )
    insert_rated(client, rated_now)
    alert = result.alerts.head(1)
    insert_alerts(client, alert.with_columns(version=pl.lit(7, dtype=pl.UInt64), cancelled=pl.lit(1, dtype=pl.UInt8)))
    counts = export(client, tmp_path / "out")
    assert counts == {"rated": result.rated.height + 1, "rejected": result.rejected.height - 1,
                      "alerts": result.alerts.height - 1}
    # The history keeps the corrected version (fed by a view of rated_calls).
    history = Client(**database.clickhouse_params()).execute(
        "SELECT cdr_id, version, correction_id FROM rated_call_versions FINAL")
    assert history == [("rated-now", 7, "00112233445566aa")]


def test_the_correction_queries_run_on_current_clickhouse_too() -> None:
    chdb_session = pytest.importorskip("chdb.session")
    session = chdb_session.Session()
    try:
        client = _ChdbClient(session)
        apply_migrations(client)  # type: ignore[arg-type]
        for cdr_id, amount, version, correction in (("c1", 100, 0, ""), ("c1", 100, 0, "00112233445566aa"),
                                                     ("c1", 80, 5, "00112233445566aa"), ("c2", 50, 0, "")):
            client.execute(
                "INSERT INTO rated_calls (account_id, cdr_id, amount, charge_time, local_day, source, line, "
                f"version, correction_id) SELECT 'A1', '{cdr_id}', {amount}, toDateTime('2026-03-01 00:00:00', 'UTC'), "
                f"toDate('2026-03-01'), 'f.csv', {1 if cdr_id == 'c1' else 2}, {version}, '{correction}'"
            )
        client.execute("INSERT INTO rejected_cdrs (line, cdr_id, reason, source) SELECT 1, 'c1', 'late', 'f.csv'")
        assert client.execute(
            "SELECT toString(count()) FROM rejected_cdrs FINAL WHERE (ingest_id, source, line) NOT IN "
            "(SELECT ingest_id, source, line FROM rated_calls WHERE correction_id != '')"
        ) == [("0",)]
        assert client.execute(
            "SELECT toString(version), toString(amount) FROM rated_call_versions FINAL ORDER BY version"
        ) == [("0", "100"), ("5", "80")]
    finally:
        session.close()
