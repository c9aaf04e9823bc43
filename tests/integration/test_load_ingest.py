"""``cdrflow load`` and ``cdrflow ingest`` against the real broker and ClickHouse.

The tests run on topics of their own (a name prefix), so they read back only what they
produced whatever else runs on the session's stack: the load tests each on fresh
``plans``/``accounts`` topics, the ingest tests on one set of topics for the module with
the vector catalogue loaded, each ingesting a copy of a vector file made unique (its
``switch_id``, which rating does not read) and reading back by file name or ingest_id.
Few topics, because every partition costs ``cdrflow status`` a fetch.
"""

from __future__ import annotations

import csv
import functools
import json
import re
import shutil
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import typer
from clickhouse_driver import Client
from kafka import KafkaAdminClient
from typer.testing import CliRunner

from rating import Catalog, RatingState, rate
from schemas.messages import CDR_CHUNK_LINES, cdr_chunk_frame, frame_from_value
from schemas.money import format_money, parse_money
from schemas.topics import TOPICS
from streams.catalog.publish import publish_tariffs, read_catalog
from streams.cli import ingest as ingest_cli
from streams.clickhouse.migrations import MIGRATIONS_DIR, apply_migrations
from streams.feeds import ingest
from streams.feeds.ingest import follow, ingest_paths
from streams.feeds.routing import REJECTION_SCHEMA
from streams.kafka.client import decode_json, read_to_end
from streams.settings import Settings
from tariffs import load_tariffs
from tests.integration.pipeline import stack_url
from tests.conftest import VECTORS

pytestmark = pytest.mark.integration

BASIC = VECTORS / "basic"
MIXED = VECTORS / "mixed"


def _create_topics(stack: Settings, prefix: str, names: list[str], partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_servers())
    try:
        topics = [prefix + name for name in names]
        admin.create_topics({t: {"num_partitions": partitions, "replication_factor": 1} for t in topics})
        admin.wait_for_topics(topics, timeout_ms=20_000)
    finally:
        admin.close()


@pytest.fixture
def catalog_prefix(stack: Settings) -> str:
    """Fresh ``plans`` and ``accounts`` topics (one partition: read_catalog reads them all)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    _create_topics(stack, prefix, ["plans", "accounts"], 1)
    return prefix


@pytest.fixture(scope="module")
def prefix(stack: Settings) -> str:
    """The module's topics, as ``cdrflow up`` makes them, with the vectors' catalogue loaded."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    _create_topics(stack, prefix, [n for n in TOPICS if n not in ("billing.events", "alerts")], stack.topic_partitions)
    _load(stack, prefix)
    return prefix


def _unique_copy(source: Path, folder: Path, name: str | None = None) -> Path:
    """A copy of a vector CDR file whose content no other test ingests."""
    token = uuid.uuid4().hex[:8]
    target = folder / (name or source.name)
    target.write_text(re.sub(r",(sw[-\d][-\w]*),", rf",\1-{token},", source.read_text()))
    return target


def _values(stack: Settings, prefix: str, topic: str) -> list[tuple[bytes, int, dict]]:
    """(key, partition, value) of every message of a topic, per partition in log order.

    On ``cdr.raw``, the ledger's messages (``cdrflow load`` imports each new account with
    an AccountOpened there) are left out: these tests look at the CDR chunks.
    """
    values = [(r.key, r.partition, decode_json(r.value)) for r in read_to_end(stack, prefix + topic)]
    return [v for v in values if not (isinstance(v[2], dict) and "ledger" in v[2])]


def test_load_imports_each_new_account_once_on_its_log(stack: Settings, prefix: str) -> None:
    _load(stack, prefix)
    _load(stack, prefix)  # nothing changed: nothing more
    imports = [
        (r.key, decode_json(r.value)["ledger"])
        for r in read_to_end(stack, prefix + "cdr.raw")
        if "ledger" in decode_json(r.value)
    ]
    tariffs = load_tariffs(BASIC / "plans", BASIC / "accounts.toml")
    assert sorted(k.decode() for k, _ in imports) == sorted(a.id for a in tariffs.accounts)
    for key, command in imports:
        account = next(a for a in tariffs.accounts if a.id == key.decode())
        assert (command["kind"], command["imported"], command["opening_balance"], command["opening_fee"]) == (
            "open", True, account.opening_balance, 0)


def _load(stack: Settings, prefix: str, vectors: Path = BASIC) -> None:
    tariffs = load_tariffs(vectors / "plans", vectors / "accounts.toml")
    publish_tariffs(stack, tariffs, vectors / "accounts.toml", topic_prefix=prefix)


def _expected_rejections(vectors: Path, reasons: set[str]) -> set[tuple[int, str, str]]:
    with (vectors / "expected" / "rejected.csv").open() as handle:
        return {(int(r["line"]), r["cdr_id"], r["reason"]) for r in csv.DictReader(handle) if r["reason"] in reasons}


def _cli_env(stack: Settings, **extra: str) -> dict[str, str]:
    return {
        "CDRFLOW_KAFKA_PORT": str(stack.kafka_port),
        "CDRFLOW_CLICKHOUSE_TCP_PORT": str(stack.clickhouse_tcp_port),
        "CDRFLOW_STATE_DIR": str(stack.state_dir),
        "CDRFLOW_KAFKA_BOOTSTRAP": "",
        "CDRFLOW_CLICKHOUSE_URL": "",
        **extra,
    }


@pytest.fixture
def invoke(stack: Settings, prefix: str, monkeypatch: pytest.MonkeyPatch):
    """Run ``cdrflow ingest`` as streams/cli/main.py registers it, on this test's topics."""
    monkeypatch.setattr(ingest, "ingest_paths", functools.partial(ingest.ingest_paths, topic_prefix=prefix))
    app = typer.Typer()
    app.command()(ingest_cli.load)
    app.command()(ingest_cli.ingest)

    def run(*args: str | Path, **env: str):
        return CliRunner().invoke(app, [str(a) for a in args], env=_cli_env(stack, **env))

    return run


# ------------------------------------------------------------------------------- load


def test_load_then_read_catalog_gives_back_the_files(stack: Settings, catalog_prefix: str) -> None:
    tariffs = load_tariffs(BASIC / "plans", BASIC / "accounts.toml")
    result = publish_tariffs(stack, tariffs, BASIC / "accounts.toml", topic_prefix=catalog_prefix)
    assert sorted(result.plans_published) == sorted(tariffs.plans)
    assert len(result.accounts_published) == len(tariffs.accounts)
    catalog = read_catalog(stack, topic_prefix=catalog_prefix)
    assert catalog.plans == tariffs.plans
    assert sorted(catalog.accounts, key=lambda a: a.id) == sorted(tariffs.accounts, key=lambda a: a.id)


def test_loading_the_same_files_again_publishes_nothing(stack: Settings, catalog_prefix: str) -> None:
    _load(stack, catalog_prefix)
    before = len(_values(stack, catalog_prefix, "plans")) + len(_values(stack, catalog_prefix, "accounts"))
    tariffs = load_tariffs(BASIC / "plans", BASIC / "accounts.toml")
    result = publish_tariffs(stack, tariffs, BASIC / "accounts.toml", topic_prefix=catalog_prefix)
    assert (result.plans_published, result.accounts_published) == ((), ())
    assert result.plans_unchanged == len(tariffs.plans) and result.accounts_unchanged == len(tariffs.accounts)
    assert len(_values(stack, catalog_prefix, "plans")) + len(_values(stack, catalog_prefix, "accounts")) == before


def test_a_changed_plan_publishes_only_that_plan(stack: Settings, catalog_prefix: str, tmp_path: Path) -> None:
    _load(stack, catalog_prefix)
    plans = tmp_path / "plans"
    shutil.copytree(BASIC / "plans", plans)
    std = plans / "std-100.toml"
    text = std.read_text()
    assert 'per_minute = "0.15"' in text
    std.write_text(text.replace('per_minute = "0.15"', 'per_minute = "0.16"', 1))
    tariffs = load_tariffs(plans, BASIC / "accounts.toml")
    result = publish_tariffs(stack, tariffs, BASIC / "accounts.toml", topic_prefix=catalog_prefix)
    assert result.plans_published == ("std-100",)
    assert result.accounts_published == ()
    assert read_catalog(stack, topic_prefix=catalog_prefix).plans["std-100"] == tariffs.plans["std-100"]
    assert [key for key, _, _ in _values(stack, catalog_prefix, "plans")].count(b"std-100") == 2


# ----------------------------------------------------------------------------- ingest


@pytest.fixture(scope="module")
def basic_ingested(stack: Settings, prefix: str, tmp_path_factory: pytest.TempPathFactory):
    cdrs = _unique_copy(BASIC / "cdrs.csv", tmp_path_factory.mktemp("basic"), "basic.csv")
    return ingest_paths(stack, [cdrs], topic_prefix=prefix).files[0]


def _of(ingest_id: str, chunks: list[pl.DataFrame]) -> list[pl.DataFrame]:
    return [chunk for chunk in chunks if chunk.get_column("ingest_id")[0] == ingest_id]


def test_ingest_sends_malformed_and_unknown_number_lines_to_rejected(
    stack: Settings, prefix: str, basic_ingested
) -> None:
    rows = pl.concat(
        [frame_from_value(value, REJECTION_SCHEMA) for _, _, value in _values(stack, prefix, "cdr.rejected")]
    ).filter(pl.col("ingest_id") == basic_ingested.ingest_id)
    assert set(rows.select("line", "cdr_id", "reason").iter_rows()) == _expected_rejections(
        BASIC, {"malformed", "unknown_number"}
    )
    assert rows.height == 8
    assert set(rows.get_column("source")) == {"basic.csv"}
    assert rows.get_column("account_id").null_count() == rows.height
    assert rows.get_column("detail").str.len_chars().min() > 0


def test_ingest_sends_every_other_line_to_raw_under_its_account_in_file_order(
    stack: Settings, prefix: str, basic_ingested
) -> None:
    numbers = load_tariffs(BASIC / "plans", BASIC / "accounts.toml").account_of_number()
    lines_by_key: dict[bytes, list[int]] = defaultdict(list)
    for key, _, value in _values(stack, prefix, "cdr.raw"):
        frame = cdr_chunk_frame(value)
        if frame.get_column("ingest_id")[0] != basic_ingested.ingest_id:
            continue
        assert 0 < frame.height <= CDR_CHUNK_LINES
        assert set(frame.get_column("ingest_id")) == {basic_ingested.ingest_id}
        assert {numbers[called] for called in frame.get_column("called")} == {key.decode()}
        lines_by_key[key].extend(frame.get_column("line"))
    rejected = {line for line, _, _ in _expected_rejections(BASIC, {"malformed", "unknown_number"})}
    every_line = sorted(line for lines in lines_by_key.values() for line in lines)
    assert every_line == [line for line in range(2, 59) if line not in rejected]
    assert all(lines == sorted(lines) for lines in lines_by_key.values())
    files = [value for _, _, value in _values(stack, prefix, "ingest.files")]
    assert [(f["name"], f["lines"]) for f in files if f["ingest_id"] == basic_ingested.ingest_id] == [("basic.csv", 57)]


def test_an_account_with_more_lines_than_a_chunk_gets_several_messages_in_order(
    stack: Settings, prefix: str, tmp_path: Path
) -> None:
    ingest_id = ingest_paths(stack, [_unique_copy(MIXED / "cdrs.csv", tmp_path)], topic_prefix=prefix).ingest_ids[0]
    messages: dict[bytes, list[list[int]]] = defaultdict(list)
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for key, partition, value in _values(stack, prefix, "cdr.raw"):
        frame = cdr_chunk_frame(value)
        if frame.get_column("ingest_id")[0] != ingest_id:
            continue
        messages[key].append(frame.get_column("line").to_list())
        partitions[key].add(partition)
    assert max(len(chunks) for chunks in messages.values()) > 1
    for key, chunks in messages.items():
        assert all(len(chunk) == CDR_CHUNK_LINES for chunk in chunks[:-1])
        lines = [line for chunk in chunks for line in chunk]
        assert lines == sorted(lines)
        assert len(partitions[key]) == 1


def test_the_same_file_again_is_refused_and_force_sends_it(
    invoke, stack: Settings, prefix: str, tmp_path: Path
) -> None:
    cdrs = _unique_copy(BASIC / "cdrs.csv", tmp_path, "again.csv")
    first = invoke("ingest", cdrs, "--json")
    assert first.exit_code == 0, first.output
    again = invoke("ingest", cdrs)
    assert again.exit_code == 3, again.output
    assert "already ingested as again.csv" in again.output and "--force" in again.output
    forced = invoke("ingest", cdrs, "--force", "--json")
    assert forced.exit_code == 0, forced.output
    ids = [json.loads(r.stdout)["files"][0]["ingest_id"] for r in (first, forced)]
    assert ids[0] != ids[1]
    sent = Counter(
        (frame.get_column("ingest_id")[0], frame.height)
        for frame in map(cdr_chunk_frame, (v for _, _, v in _values(stack, prefix, "cdr.raw")))
        if frame.get_column("source")[0] == "again.csv"
    )
    lines = Counter()
    for (ingest_id, height), count in sent.items():
        lines[ingest_id] += height * count
    assert set(lines) == set(ids) and lines[ids[0]] == lines[ids[1]] == 49


def test_a_folder_ingests_every_csv_file_in_it(invoke, stack: Settings, prefix: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    _unique_copy(BASIC / "cdrs.csv", spool, "folder-a.csv")
    _unique_copy(MIXED / "cdrs.csv", spool, "folder-b.csv")
    (spool / "notes.txt").write_text("not a CDR file")
    result = invoke("ingest", spool, "--json")
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["files"]
    assert [Path(f["path"]).name for f in files] == ["folder-a.csv", "folder-b.csv"]
    recorded = {v["ingest_id"]: v["name"] for _, _, v in _values(stack, prefix, "ingest.files")}
    assert [recorded.get(f["ingest_id"]) for f in files] == ["folder-a.csv", "folder-b.csv"]


def test_follow_picks_up_a_new_file_and_moves_it_to_done(stack: Settings, prefix: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    stop = threading.Event()
    events = []
    watcher = threading.Thread(
        target=follow,
        args=(stack, spool),
        kwargs={"topic_prefix": prefix, "stop": stop, "on_event": events.append, "poll_s": 0.1, "settle_s": 0.3},
    )
    watcher.start()
    try:
        time.sleep(0.5)
        _unique_copy(BASIC / "cdrs.csv", spool, "cdrs.csv.part").rename(spool / "cdrs.csv")
        deadline = time.monotonic() + 20
        while not events and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert not watcher.is_alive()
    assert [(e.kind, e.path.name) for e in events] == [("ingested", "cdrs.csv")]
    assert (spool / "done" / "cdrs.csv").exists() and not (spool / "cdrs.csv").exists()
    recorded = [v["name"] for _, _, v in _values(stack, prefix, "ingest.files") if v["ingest_id"] == events[0].result.ingest_id]
    assert recorded == ["cdrs.csv"]


# ------------------------------------------------------------------------------- wait


@pytest.fixture
def database(stack: Settings) -> Iterator[str]:
    """A ClickHouse database of this test's own (the session's tables stay untouched)."""
    name = f"wait_{uuid.uuid4().hex[:10]}"
    client = Client(**{**stack.clickhouse_params(), "database": ""})
    client.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {name}")
        client.disconnect()


def _ingest_ids(stack: Settings, prefix: str) -> set[str]:
    return {v["ingest_id"] for _, _, v in _values(stack, prefix, "cdr.raw")}


def _stand_in_worker(stack: Settings, prefix: str, database: str, stop: threading.Event, skip: set[str]) -> None:
    """Rates what ingest sent with the engine, as the worker will, and lands it; the
    ingests in ``skip`` (sent before it started) are left alone."""
    catalog = Catalog.from_tariffs(read_catalog(stack, topic_prefix=prefix))
    client = Client(**{**stack.clickhouse_params(), "database": database})
    landed: set[str] = set(skip)
    while not stop.wait(0.3):
        raw = [cdr_chunk_frame(v) for _, _, v in _values(stack, prefix, "cdr.raw")]
        refused = [frame_from_value(v, REJECTION_SCHEMA) for _, _, v in _values(stack, prefix, "cdr.rejected")]
        if not raw:
            continue
        batches = pl.concat(raw).partition_by("ingest_id", as_dict=True)
        for (ingest_id,), batch in batches.items():
            if ingest_id in landed:
                continue
            result = rate(batch, RatingState.empty(), catalog)
            rejected = pl.concat([*refused, result.rejected.select(list(REJECTION_SCHEMA))], how="vertical_relaxed")
            # The sink lands an unknown account as '' (schemas/migrations).
            rejected = rejected.filter(pl.col("ingest_id") == ingest_id).with_columns(pl.col("account_id").fill_null(""))
            rated = result.rated.select("cdr_id", "account_id", "status", "amount", "line", "source", "ingest_id")
            alerts = result.alerts.select("account_id", "kind", "cdr_id", "balance", "line", "local_day", "source", "ingest_id")
            for table, frame in (("rated_calls", rated), ("rejected_cdrs", rejected), ("alerts", alerts)):
                client.execute(f"INSERT INTO {table} ({', '.join(frame.columns)}) VALUES", frame.rows())
            landed.add(ingest_id)
    client.disconnect()


def test_wait_says_so_when_the_tables_do_not_exist_then_prints_the_summary(
    invoke, stack: Settings, prefix: str, database: str, tmp_path: Path
) -> None:
    cdrs = _unique_copy(BASIC / "cdrs.csv", tmp_path)
    url = stack_url(stack, database)
    no_tables = invoke("ingest", cdrs, "--wait", CDRFLOW_CLICKHOUSE_URL=url)
    assert no_tables.exit_code == 1, no_tables.output
    assert f"{database}.rated_calls" in no_tables.output and "the lines were sent" in no_tables.output

    client = Client(**{**stack.clickhouse_params(), "database": database})
    apply_migrations(client, MIGRATIONS_DIR)
    client.disconnect()
    stop = threading.Event()
    worker = threading.Thread(target=_stand_in_worker, args=(stack, prefix, database, stop, _ingest_ids(stack, prefix)))
    worker.start()
    try:
        waited = invoke("ingest", cdrs, "--force", "--wait", "--timeout", "30", "--json", CDRFLOW_CLICKHOUSE_URL=url)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert waited.exit_code == 0, waited.output
    landed = json.loads(waited.stdout)["landed"]
    expected_rated = pl.read_csv(BASIC / "expected" / "rated.csv", infer_schema=False)
    assert landed["rated"] == expected_rated.filter(pl.col("status") == "rated").height
    assert landed["unbilled"] == expected_rated.filter(pl.col("status") == "unbilled").height
    expected_reasons = Counter(reason for _, _, reason in _expected_rejections(BASIC, {
        "malformed", "unknown_number", "duplicate", "invalid_time", "no_rate"}))
    assert landed["rejected"] == dict(expected_reasons)
    alerts = pl.read_csv(BASIC / "expected" / "alerts.csv", infer_schema=False)
    assert landed["alerts"] == dict(Counter(alerts.get_column("kind")))
    assert landed["amount"] == format_money(sum(map(parse_money, expected_rated.get_column("amount"))))
