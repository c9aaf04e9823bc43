"""``cdrflow worker`` on a generated month (60k CDRs, 600 accounts): exact, and how fast.

Asserts that the streamed results equal the offline ``rate`` path's, row for row,
balances included; prints the figures (run with ``-s``). The speed target lives in
bench/pipeline_bench.py (200k CDRs); this size keeps several batches per partition.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from rating import Catalog
from streams.generate import generate_dataset
from streams.rate_files import rate_file
from tests.integration.pipeline import Pipeline, read_csv_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CDRS = 60_000
ACCOUNTS = 600


def _log_time(line: str) -> datetime:
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


def test_worker_rates_a_generated_month_exactly_and_reports_its_speed(stack, tmp_path: Path) -> None:
    data = tmp_path / "month"
    generate_dataset(data, cdrs=CDRS, accounts=ACCOUNTS, month="2026-03", seed=7)
    pipeline = Pipeline(stack, tmp_path / "pipeline")
    try:
        pipeline.tariffs = pipeline.load_catalog(data)
        messages = pipeline.cdr_messages(data / "cdrs.csv", pipeline.tariffs, ingest_id=pipeline.name)
        worker = pipeline.start_worker()
        deadline = time.monotonic() + 120
        while "resumed " not in worker.log_text():
            assert worker.alive() and time.monotonic() < deadline, worker.log_text()[-3000:]
            time.sleep(0.2)
        started = time.monotonic()
        pipeline.produce(messages)
        produced = time.monotonic() - started
        counts = pipeline.wait_until(
            lambda c: c["rated_calls"] + c["rejected_cdrs"] >= CDRS, timeout_s=300, what=f"{CDRS:,} lines landing"
        )
        landed = time.monotonic() - started
        batches = [line for line in worker.log_text().splitlines() if re.search(r"rated \d+ lines of", line)]
        busy = sum(float(re.search(r"in ([\d.]+) s", line).group(1)) for line in batches)
        first_to_last = (_log_time(batches[-1]) - _log_time(batches[0])).total_seconds()
        lines = sum(int(re.search(r"rated (\d+) lines", line).group(1)) for line in batches)
        print(
            f"\n{CDRS:,} lines in {len(messages):,} messages: produced in {produced:.1f} s "
            f"({CDRS / produced:,.0f} lines/s); all landed in ClickHouse {landed:.1f} s after the "
            f"first send ({CDRS / landed:,.0f} lines/s end to end)\n"
            f"rating agent: {len(batches)} batches, {lines:,} lines, first to last batch "
            f"{first_to_last:.1f} s; rating itself (rate_messages) {busy:.1f} s "
            f"({lines / busy:,.0f} lines/s)\nlanded: {counts}"
        )
        streamed = pipeline.export(tmp_path / "export")
        rate_file(data / "cdrs.csv", Catalog.from_tariffs(pipeline.tariffs), tmp_path / "offline")
        for name, key in (("rated", ["account_id", "cdr_id"]), ("alerts", ["account_id", "cdr_id", "kind"])):
            offline = pl.read_csv(tmp_path / "offline" / f"{name}.csv", infer_schema=False).sort(key)
            online = pl.read_csv(streamed / f"{name}.csv", infer_schema=False).select(offline.columns).sort(key)
            assert online.equals(offline), name
        offline_rejected = {(r["line"], r["reason"]) for r in read_csv_rows(tmp_path / "offline" / "rejected.csv")}
        online_rejected = {(r["line"], r["reason"]) for r in read_csv_rows(streamed / "rejected.csv")}
        assert online_rejected == offline_rejected
    finally:
        pipeline.stop_workers()
