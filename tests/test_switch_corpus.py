"""Real switch files and their byte formats with 400 numbers (issue 21): the offline path.

Every file of tests/data/switches (README.md there: where each comes from) is rated as
`cdrflow rate` rates it and must give its expected outputs exactly, every column; read in
small pieces it gives the same (a chunk may end anywhere); the reader's warnings are said.
tests/integration/test_switch_corpus.py runs the same files through the streaming path.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from streams.offline.rate import rate_file
from tests.conftest import run_cdrflow
from tests.switch_corpus import CORPUS, CorpusFile, corpus_catalog, corpus_files, read_outputs

FILES = corpus_files()


@pytest.mark.parametrize("entry", FILES, ids=[f.name for f in FILES])
def test_each_switch_file_rates_to_its_expected_outputs(entry: CorpusFile, tmp_path: Path) -> None:
    summary = rate_file(entry.path, corpus_catalog(), tmp_path, feed=entry.feed())
    got, want = read_outputs(tmp_path), read_outputs(entry.expected)
    for name in want:
        assert_frame_equal(got[name], want[name], check_dtypes=False)
    # every line ends in one output, but those the format says are no records
    lines = entry.path.read_bytes().count(b"\n") + (not entry.path.read_bytes().endswith(b"\n"))
    records = lines - (1 if entry.feed().has_header else 0)
    assert summary.cdrs == got["rated"].height + got["rejected"].height <= records
    assert len(summary.warnings) == len(entry.warnings)
    for said, words in zip(summary.warnings, entry.warnings, strict=True):
        assert words in said


@pytest.mark.parametrize("entry", [f for f in FILES if f.path.stat().st_size > 1000], ids=lambda f: f.name)
def test_a_file_read_in_small_pieces_rates_the_same(entry: CorpusFile, tmp_path: Path) -> None:
    rate_file(entry.path, corpus_catalog(), tmp_path, feed=entry.feed(), chunk_bytes=700)
    got, want = read_outputs(tmp_path), read_outputs(entry.expected)
    for name in want:
        assert_frame_equal(got[name], want[name], check_dtypes=False)


def test_the_cli_rates_a_corpus_file_and_warns_on_stderr(tmp_path: Path) -> None:
    (entry,) = [f for f in FILES if f.name == "asterisk-18col-utc-read-as-shanghai"]
    run = run_cdrflow(
        "rate", entry.path, "--plans", CORPUS / "plans", "--accounts", CORPUS / "accounts.toml",
        "--out", tmp_path, *entry.options(), "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "warning" in run.stderr and "usegmtime=yes" in " ".join(run.stderr.split())
    assert '"warnings": [' in run.stdout and "times are written in UTC+00:00" in run.stdout


def test_utc_times_read_as_beijing_move_every_call_by_eight_hours() -> None:
    utc, shanghai = (
        read_outputs(CORPUS / "expected" / name)["rated"]
        for name in ("asterisk-18col-utc", "asterisk-18col-utc-read-as-shanghai")
    )
    moved = utc.join(shanghai, on=["cdr_id", "status", "line"], suffix="_bj").select(
        (pl.col("charge_time").str.to_datetime(time_zone="UTC") - pl.col("charge_time_bj").str.to_datetime(time_zone="UTC")).alias("moved")
    )
    assert moved.height == utc.height and set(moved.get_column("moved").dt.total_hours()) == {8}
    # the morning calls (01:00-08:00 UTC) are read as night calls: off-peak, discounted
    assert utc.filter(pl.col("offpeak") == "true").get_column("cdr_id").to_list() == ["1772461800.77"]
    assert shanghai.filter(pl.col("offpeak") == "true").height == 8


def test_the_licensed_real_files_are_kept_byte_for_byte() -> None:
    # README.md names the SHA-256 prefix of each; a re-save (line ends, encoding) breaks them.
    import hashlib

    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    for path in sorted((CORPUS / "real").iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        assert f"`{path.name}`" in readme and digest in readme, path.name
