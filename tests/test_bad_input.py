"""Bad input: each broken line is rejected malformed with its line number, the rest rated;
broken files and folders stop the run with a message, never a traceback."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from schemas.cdr_csv import parse_chunk
from schemas.columns import CDR_HEADER
from tests.conftest import VECTORS, run_cdrflow

BASIC = VECTORS / "basic"
GOOD = (
    b"G1,sw1,13800138000,4008001234,01088886666,010,010,2026-03-02T09:00:00+08:00,"
    b"2026-03-02T09:00:05+08:00,2026-03-02T09:02:10+08:00,125,ANSWERED"
)


def _rate(tmp_path: Path, body: list[bytes], *, newline: bytes = b"\n") -> tuple[pl.DataFrame, pl.DataFrame]:
    cdrs = tmp_path / "cdrs.csv"
    cdrs.write_bytes(newline.join([CDR_HEADER.encode(), *body]) + newline)
    run = run_cdrflow("rate", cdrs, "--plans", BASIC / "plans", "--accounts", BASIC / "accounts.toml", "--out", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    rated = pl.read_csv(tmp_path / "out" / "rated.csv", infer_schema=False)
    rejected = pl.read_csv(tmp_path / "out" / "rejected.csv", infer_schema=False)
    return rated, rejected


def _good(n: int) -> bytes:
    return GOOD.replace(b"G1,", f"G{n},".encode(), 1)


BROKEN_LINES = {
    "not UTF-8": b"X1,sw1,\xff\xfe13800138000,4008001234,01088886666,010,010,2026-03-02T09:00:00+08:00,,2026-03-02T09:00:05+08:00,0,BUSY",
    "100 kB line": b"X2,sw1," + b"9" * 100_000 + b",4008001234,01088886666,010,010,2026-03-02T09:00:00+08:00,,2026-03-02T09:00:05+08:00,0,BUSY",
    "missing column": b"X3,sw1,13800138000,4008001234,01088886666,010,010,2026-03-02T09:00:00+08:00,,2026-03-02T09:00:05+08:00,0",
    "extra column": b"X4,sw1,13800138000,4008001234,01088886666,010,010,2026-03-02T09:00:00+08:00,,2026-03-02T09:00:05+08:00,0,BUSY,x",
    "NUL byte": b"X5,sw1,1380\x000138000,4008001234,01088886666,010,010,2026-03-02T09:00:00+08:00,,2026-03-02T09:00:05+08:00,0,BUSY",
    "blank line": b"",
    "replacement character": "X8,sw\ufffd1,13800138000,4008001234,01088886666,010,010,2026-03-02T09:00:00+08:00,,2026-03-02T09:00:05+08:00,0,BUSY".encode(),
    "unbalanced quote": b'X7,"sw1,13800138000,4008001234,01088886666,010,010,2026-03-02T09:00:00+08:00,,2026-03-02T09:00:05+08:00,0,BUSY',
}


@pytest.mark.parametrize("kind", list(BROKEN_LINES))
def test_a_broken_line_is_rejected_malformed_and_the_rest_is_rated(tmp_path: Path, kind: str) -> None:
    rated, rejected = _rate(tmp_path, [_good(1), BROKEN_LINES[kind], _good(2)])
    assert rated["cdr_id"].to_list() == ["G1", "G2"]
    assert rejected.select("line", "reason").rows() == [("3", "malformed")]
    assert rejected["detail"][0]


@pytest.mark.parametrize("kind", list(BROKEN_LINES))
def test_a_broken_first_line_of_a_chunk_leaves_the_lines_after_it_whole(kind: str) -> None:
    # The reader takes no width from the first line: the good lines keep all 12 fields.
    batch = parse_chunk(b"\n".join([BROKEN_LINES[kind], _good(1), _good(2)]) + b"\n", first_line=2)
    assert batch["line"].to_list() == [2, 3, 4]
    assert batch["framing"][0] is not None
    assert batch["framing"][1:].to_list() == [None, None]
    assert batch.row(1) == (3, *GOOD.decode().split(","), None)


def test_all_broken_lines_together_keep_their_line_numbers(tmp_path: Path) -> None:
    body = [_good(1), *BROKEN_LINES.values(), _good(2)]
    rated, rejected = _rate(tmp_path, body, newline=b"\r\n")
    assert rated["cdr_id"].to_list() == ["G1", "G2"]
    assert rated["line"].to_list() == ["2", str(len(body) + 1)]
    assert rejected["line"].to_list() == [str(n) for n in range(3, len(body) + 1)]
    assert set(rejected["reason"]) == {"malformed"}


def test_a_quoted_csv_line_is_read_by_the_csv_rules(tmp_path: Path) -> None:
    quoted = b'"Q1","sw,1",13800138000,4008001234,01088886666,010,010,2026-03-02T09:00:00+08:00,2026-03-02T09:00:05+08:00,2026-03-02T09:02:10+08:00,125,"ANSWERED"'
    rated, rejected = _rate(tmp_path, [quoted])
    assert rejected.height == 0
    assert rated.select("cdr_id", "billable_s", "allowance_s").rows() == [("Q1", "180", "180")]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("start_time", b"2026-03-02 09:00:00"),
        ("start_time", b"2026-02-30T09:00:00+08:00"),
        ("billsec", b"-5"),
        ("billsec", b"12.5"),
        ("disposition", b"ANSWERD"),
        ("cdr_id", b""),
    ],
)
def test_a_bad_field_is_malformed_and_named(tmp_path: Path, field: str, value: bytes) -> None:
    originals = {
        "start_time": b"2026-03-02T09:00:00+08:00",
        "billsec": b",125,",
        "disposition": b"ANSWERED",
        "cdr_id": b"G1",
    }
    old = originals[field]
    new = b"," + value + b"," if field == "billsec" else value
    line = GOOD.replace(old, new, 1)
    _, rejected = _rate(tmp_path, [line])
    assert rejected.select("line", "reason").rows() == [("2", "malformed")]
    assert field in rejected["detail"][0]


def _refused(run) -> str:
    assert run.returncode != 0
    assert "Traceback" not in run.stdout + run.stderr
    return run.stderr


def test_a_missing_cdr_file_is_refused_with_its_name(tmp_path: Path) -> None:
    run = run_cdrflow("rate", tmp_path / "nope.csv", "--plans", BASIC / "plans", "--accounts", BASIC / "accounts.toml", "--out", tmp_path / "out")
    assert "nope.csv: CDR file not found" in _refused(run)


def test_an_unwritable_output_folder_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run = run_cdrflow("rate", BASIC / "cdrs.csv", "--plans", BASIC / "plans", "--accounts", BASIC / "accounts.toml", "--out", blocker / "out")
    assert "cannot write the output folder" in _refused(run)


def test_invalid_plans_stop_the_run_naming_the_file(tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "bad.toml").write_text('id = "bad"\n[[versions]]\neffective_from = 2026-01-01T00:00:00+08:00\nincrement = { first = 0, next = 60 }\n')
    run = run_cdrflow("rate", BASIC / "cdrs.csv", "--plans", plans, "--accounts", BASIC / "accounts.toml", "--out", tmp_path / "out")
    message = _refused(run)
    assert "bad.toml" in message and "increment > first" in message


def test_a_file_without_the_cdr_header_is_refused(tmp_path: Path) -> None:
    cdrs = tmp_path / "cdrs.csv"
    cdrs.write_bytes(GOOD + b"\n")
    run = run_cdrflow("rate", cdrs, "--plans", BASIC / "plans", "--accounts", BASIC / "accounts.toml", "--out", tmp_path / "out")
    message = _refused(run)
    assert "cdrs.csv: line 1" in message and "missing" in message


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    cdrs = tmp_path / "cdrs.csv"
    cdrs.write_bytes(b"")
    run = run_cdrflow("rate", cdrs, "--plans", BASIC / "plans", "--accounts", BASIC / "accounts.toml", "--out", tmp_path / "out")
    assert "cdrs.csv: line 1" in _refused(run)


def test_a_header_only_file_rates_nothing_and_succeeds(tmp_path: Path) -> None:
    rated, rejected = _rate(tmp_path, [])
    assert rated.height == 0 and rejected.height == 0
