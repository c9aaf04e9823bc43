"""The switch corpus (tests/data/switches, issue 21) on the streaming path: ingest with each
file's format, the worker rates, the sinks land, and what ClickHouse holds for each file
is its expected outputs, every column, as on the offline path (tests/test_switch_corpus.py).

Each synthetic file calls the same accounts, and its expected outputs start from their
opening balances: it goes through a pipeline of its own (topics and database; one
worker each). The real files call no account: they share one.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from schemas.output_files import CSV_DATETIME_FORMAT, alerts_csv_frame, rated_csv_frame, rejected_csv_frame
from streams.clickhouse.insert import connect
from streams.clickhouse.query import read_table
from streams.clickhouse.tables import ALERTS, RATED, REJECTED
from streams.feeds.ingest import ingest_paths
from streams.settings import Settings
from tests.integration.pipeline import Pipeline
from tests.switch_corpus import CORPUS, CorpusFile, corpus_files, read_outputs

pytestmark = [pytest.mark.integration]

LAND_TIMEOUT_S = 180.0
FILES = corpus_files()
#: Files whose lines reach no account (nothing of them depends on another's): one pipeline.
SHARED = [f for f in FILES if f.path.parent.name == "real"]
ALONE = [f for f in FILES if f.path.parent.name != "real"]


def _landed_per_file(pipeline: Pipeline, entries: list[CorpusFile], out: Path) -> dict[str, dict[str, pl.DataFrame]]:
    """What ClickHouse holds for each file, as the offline run writes it (read back as text)."""
    client = connect(pipeline.settings)
    try:
        order = ("source", "line", "ingest_id")
        rated = read_table(
            client, RATED, order_by=(*order, "account_id", "cdr_id"), keep=("credit_used", "credit", "caller_origin", "source")
        )
        rejected = read_table(client, REJECTED, order_by=order, keep=("source",))
        alerts = read_table(client, ALERTS, order_by=order, keep=("source", "cancelled"))
    finally:
        client.disconnect()
    found = {}
    for entry in entries:
        of_file = pl.col("source") == entry.path.name
        frames = {
            "rated": rated_csv_frame(rated.filter(of_file).drop("source")),
            "rejected": rejected_csv_frame(rejected.filter(of_file).drop("source")),
            "alerts": alerts_csv_frame(alerts.filter(of_file & (pl.col("cancelled") == 0)).drop("source", "cancelled")),
        }
        folder = out / entry.name
        folder.mkdir(parents=True)
        for name, frame in frames.items():
            frame.write_csv(folder / f"{name}.csv", datetime_format=CSV_DATETIME_FORMAT)
        found[entry.name] = read_outputs(folder)
    return found


def _run(pipeline: Pipeline, entries: list[CorpusFile], tmp_path: Path) -> None:
    pipeline.load_catalog(CORPUS)
    settings = pipeline.settings
    expected = {entry.name: read_outputs(entry.expected) for entry in entries}
    for entry in entries:
        run = ingest_paths(settings, [entry.path], topic_prefix=pipeline.prefix, feed=entry.feed())
        (sent,) = run.files
        # ingest says what the reader noticed, as rate does
        assert len(sent.warnings) == len(entry.warnings), sent.warnings
        for said, words in zip(sent.warnings, entry.warnings, strict=True):
            assert words in said
    rows = sum(want["rated"].height + want["rejected"].height for want in expected.values())
    alerts = sum(want["alerts"].height for want in expected.values())
    pipeline.start_worker()
    pipeline.wait_until(
        lambda c: c["rated_calls"] + c["rejected_cdrs"] >= rows and c["alerts"] >= alerts,
        timeout_s=LAND_TIMEOUT_S,
        what=f"{', '.join(e.name for e in entries)} landing",
    )
    got = _landed_per_file(pipeline, entries, tmp_path / "landed")
    # the finance views hold every row too: one call's unbilled and billed legs are two
    client = pipeline.client()
    try:
        assert client.execute("SELECT count() FROM calls_by_day FINAL")[0][0] == sum(
            want["rated"].height for want in expected.values()
        )
    finally:
        client.disconnect()
    for entry in entries:
        for name in ("rated", "rejected", "alerts"):
            assert_frame_equal(got[entry.name][name], expected[entry.name][name], check_dtypes=False)


def test_the_real_switch_files_land_as_offline(pipeline: Pipeline, tmp_path: Path) -> None:
    _run(pipeline, SHARED, tmp_path)


@pytest.mark.parametrize("entry", ALONE, ids=[f.name for f in ALONE])
def test_each_synthetic_switch_file_lands_as_offline(stack: Settings, entry: CorpusFile, tmp_path: Path) -> None:
    pipeline = Pipeline(stack, tmp_path / "pipeline")
    try:
        _run(pipeline, [entry], tmp_path)
    finally:
        pipeline.stop_workers()
