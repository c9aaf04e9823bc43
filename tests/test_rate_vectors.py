"""Every vector set through the offline rating path, exactly (spec 6)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from rating import Catalog
from streams.offline.compare import compare_outputs
from streams.offline.rate import rate_file
from tariffs import load_tariffs
from tests.conftest import run_cdrflow


def test_cdrflow_rate_reproduces_the_vector_set_exactly(vector_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = run_cdrflow(
        "rate", vector_set / "cdrs.csv", "--plans", vector_set / "plans",
        "--accounts", vector_set / "accounts.toml", "--out", out,
    )
    assert run.returncode == 0, run.stderr
    compared = compare_outputs(vector_set / "expected", out)
    assert compared.ok, compared.report()


def test_rating_in_small_chunks_writes_the_same_files_as_rating_whole(vector_set: Path, tmp_path: Path) -> None:
    catalog = Catalog.from_tariffs(load_tariffs(vector_set / "plans", vector_set / "accounts.toml"))
    rate_file(vector_set / "cdrs.csv", catalog, tmp_path / "whole")
    rate_file(vector_set / "cdrs.csv", catalog, tmp_path / "chunked", chunk_bytes=max(700, (vector_set / "cdrs.csv").stat().st_size // 40))
    for name in ("rated.csv", "rejected.csv", "alerts.csv"):
        whole = pl.read_csv(tmp_path / "whole" / name, infer_schema=False)
        chunked = pl.read_csv(tmp_path / "chunked" / name, infer_schema=False)
        assert chunked.height == whole.height
        assert chunked.equals(whole), name


def test_every_input_line_ends_in_exactly_one_output(vector_set: Path, tmp_path: Path) -> None:
    catalog = Catalog.from_tariffs(load_tariffs(vector_set / "plans", vector_set / "accounts.toml"))
    rate_file(vector_set / "cdrs.csv", catalog, tmp_path)
    lines = (vector_set / "cdrs.csv").read_bytes().rstrip(b"\n").count(b"\n")
    rated = pl.read_csv(tmp_path / "rated.csv", infer_schema=False)["line"].cast(pl.Int64)
    rejected = pl.read_csv(tmp_path / "rejected.csv", infer_schema=False)["line"].cast(pl.Int64)
    every = pl.concat([rated, rejected]).sort()
    assert every.to_list() == list(range(2, lines + 2))
