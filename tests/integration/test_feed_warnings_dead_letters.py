"""What a whole feed or a whole message has wrong is said in `cdrflow status` (issue 21):
a live feed whose times are read in another zone than they are written in (item 4), and
output messages ClickHouse refuses, put in dead_letters rather than retried forever
(item 11)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from rating import Catalog, RatingState, rate
from schemas.cdr_csv import parse_csv
from schemas.messages import frame_value
from schemas.switch_formats import Feed
from schemas.topics import BILLING_EVENTS
from streams.feeds.tail import TailEvent, Tailer
from streams.kafka.client import Sender
from streams.stack.status import status
from tariffs import load_tariffs
from tests.conftest import VECTORS
from tests.integration.pipeline import Pipeline
from tests.switch_corpus import CORPUS

pytestmark = [pytest.mark.integration]


def test_a_tailed_file_read_in_the_wrong_zone_is_warned_about_in_status(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.load_catalog(CORPUS)
    master = tmp_path / "Master.csv"
    shutil.copyfile(CORPUS / "synthetic" / "asterisk-18col-utc-Master.csv", master)
    events: list[TailEvent] = []
    feed = Feed.of("asterisk", switch_timezone="Asia/Shanghai")  # the file is UTC (usegmtime=yes)
    tailer = Tailer(pipeline.settings, [master], feed, topic_prefix=pipeline.prefix, on_event=events.append)
    tailer.start()
    try:
        tailer.step()
        tailer.step()
    finally:
        tailer.close()
        tailer.table.stop()
    (warning,) = [e for e in events if e.kind == "warning"]
    assert "times are written in UTC+00:00" in warning.message and "read in Asia/Shanghai" in warning.message
    answer = status(pipeline.prefixed_settings())
    (source,) = answer["feed_warnings"]
    assert source.startswith("Master.csv@") and answer["feed_warnings"][source]["warnings"] == [warning.message]
    assert any(note.startswith(f"feed {source}: times are written in UTC") for note in answer["notes"])


def test_a_message_clickhouse_refuses_lands_in_dead_letters_and_the_rest_lands(pipeline: Pipeline) -> None:
    vectors = VECTORS / "basic"
    catalog = Catalog.from_tariffs(load_tariffs(vectors / "plans", vectors / "accounts.toml"))
    rated = rate(parse_csv((vectors / "cdrs.csv").read_bytes()), RatingState.empty(), catalog).rated.head(6)
    good, bad = rated.head(3), rated.tail(3)
    # A charge time ClickHouse's DateTime cannot hold (rating keeps such calls out: this is
    # a foreign or older producer's message, the sink's own guard).
    bad = bad.with_columns(pl.lit(datetime(2107, 1, 1, tzinfo=UTC)).cast(pl.Datetime("us", "UTC")).alias("charge_time"))
    sender = Sender(pipeline.settings)
    try:
        for frame in (bad, good):
            sender.send(pipeline.topic(BILLING_EVENTS), b"cdr.raw[0]", frame_value(frame), partition=0)
        sender.flush()
    finally:
        sender.close()
    pipeline.start_worker()

    def dead_letters(_: dict[str, int]) -> bool:
        client = pipeline.client()
        try:
            return client.execute("SELECT count() FROM dead_letters FINAL")[0][0] >= 1
        finally:
            client.disconnect()

    pipeline.wait_until(lambda c: c["rated_calls"] >= 3 and dead_letters(c), timeout_s=120, what="dead letter")
    client = pipeline.client()
    try:
        (letter,) = client.execute("SELECT kind, `offset`, rows, reason, message FROM dead_letters FINAL")
        landed = sorted(row[0] for row in client.execute("SELECT cdr_id FROM rated_calls FINAL"))
    finally:
        client.disconnect()
    assert letter[:3] == ("rated", 0, 3) and "2107" in letter[4]
    assert landed == sorted(good.get_column("cdr_id").to_list())
    answer = status(pipeline.prefixed_settings())
    assert answer["dead_letters"]["rated"]["messages"] == 1
    assert any("in the dead_letters table" in note for note in answer["notes"])
