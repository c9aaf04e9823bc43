"""Streaming ingest of a switch's own file (issue 7): ingest -> worker -> export.

The same generated traffic, written as Asterisk's Master.csv, is ingested with
``--format asterisk`` (``ingest_paths(feed=...)``, the CLI's library call) on a pipeline of
its own; what lands in ClickHouse, exported, must equal the offline rating of the
canonical file, line numbers shifted by the header Master.csv does not have.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from rating import Catalog
from schemas.switch_formats import Feed
from streams.feeds.ingest import ingest_paths
from streams.offline.compare import compare_outputs
from streams.offline.generate import generate_dataset
from streams.offline.rate import rate_file
from tariffs import load_tariffs
from tests.integration.pipeline import Pipeline, read_csv_rows

pytestmark = [pytest.mark.integration]

LAND_TIMEOUT_S = 240.0


def test_ingest_of_an_asterisk_master_csv_lands_as_the_canonical_run(pipeline: Pipeline, tmp_path: Path) -> None:
    options = {"cdrs": 3_000, "accounts": 80, "month": "2026-03", "seed": 13}  # a seed whose month raises alerts (2)
    canonical = generate_dataset(tmp_path / "canonical", **options)
    asterisk = generate_dataset(tmp_path / "asterisk", **options, cdr_format="asterisk")

    # The canonical run: the offline path, which the streaming path equals (docs/streaming.md).
    rate_file(
        canonical.cdrs_file,
        Catalog.from_tariffs(load_tariffs(canonical.plans_dir, canonical.accounts_file)),
        tmp_path / "offline",
    )
    want = tmp_path / "want"
    want.mkdir()
    for name in ("rated", "rejected", "alerts"):
        frame = pl.read_csv(tmp_path / "offline" / f"{name}.csv", infer_schema=False)
        frame.with_columns(pl.col("line").cast(pl.Int64) - 1).write_csv(want / f"{name}.csv")
    alerts = len(read_csv_rows(want / "alerts.csv"))
    assert alerts > 0

    pipeline.load_catalog(asterisk.root)
    run = ingest_paths(pipeline.settings, [asterisk.cdrs_file], topic_prefix=pipeline.prefix, feed=Feed.of("asterisk"))
    (sent,) = run.files
    assert sent.lines == 3_000 and sent.rejected["malformed"] == canonical.malformed
    pipeline.start_worker()
    pipeline.wait_until(
        lambda c: c["rated_calls"] + c["rejected_cdrs"] >= 3_000 and c["alerts"] >= alerts,
        timeout_s=LAND_TIMEOUT_S,
        what="Master.csv landing",
    )
    exported = pipeline.export(tmp_path / "export")
    compared = compare_outputs(want, exported)
    assert compared.ok, compared.report()
    rejected = read_csv_rows(exported / "rejected.csv")
    assert {row["file"] for row in rejected} == {"Master.csv"}
    wanted = read_csv_rows(want / "rejected.csv")
    assert sorted((r["line"], r["cdr_id"], r["reason"]) for r in rejected) == sorted(
        (r["line"], r["cdr_id"], r["reason"]) for r in wanted
    )
    # Rated rows carry the same prices and the (physical) line of Master.csv.
    got = pl.read_csv(exported / "rated.csv", infer_schema=False).sort("line")
    offline = pl.read_csv(want / "rated.csv", infer_schema=False).sort("line")
    for column in ("cdr_id", "account_id", "status", "class", "amount", "balance", "line"):
        assert got.get_column(column).to_list() == offline.get_column(column).to_list(), column
