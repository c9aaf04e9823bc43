"""Times that are no call's (issue 21 item 11): bounds judged before the horizon, on every path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from rating import Catalog, RatingState, rate
from rating.bounds import DEFAULT_TIME_BOUNDS, TimeBounds
from schemas.cdr_csv import parse_csv
from schemas.columns import CDR_HEADER
from streams.settings import Settings
from tariffs import load_tariffs
from tests.conftest import VECTORS, run_cdrflow

BASIC = VECTORS / "basic"


def _line(cdr_id: str, day: str, billsec: int = 60, end_after: int | None = None) -> str:
    end = billsec if end_after is None else end_after
    answer = datetime.fromisoformat(f"{day}T09:00:05+08:00")
    return ",".join([
        cdr_id, "sw1", "13800138000", "4008001234", "01088886666", "010", "010",
        f"{day}T09:00:00+08:00", answer.isoformat(), (answer + timedelta(seconds=end)).isoformat(),
        str(billsec), "ANSWERED",
    ])  # fmt: skip


def _rate(lines: list[str], read_at: datetime | None = None, bounds: TimeBounds = DEFAULT_TIME_BOUNDS):
    catalog = Catalog.from_tariffs(load_tariffs(BASIC / "plans", BASIC / "accounts.toml"), time_bounds=bounds)
    batch = parse_csv(("\n".join([CDR_HEADER, *lines]) + "\n").encode())
    if read_at is not None:
        batch = batch.with_columns(pl.lit(read_at).cast(pl.Datetime("us", "UTC")).alias("read_at"))
    return rate(batch, RatingState.empty(), catalog)


def test_the_worker_settings_default_to_the_engine_bounds() -> None:
    settings = Settings()
    assert settings.time_bounds() == DEFAULT_TIME_BOUNDS


def test_a_call_of_2100_is_invalid_time_and_moves_no_horizon() -> None:
    result = _rate([_line("F1", "2100-03-02"), _line("R1", "2026-03-02"), _line("R2", "2026-03-03")])
    rejected = result.rejected.select("cdr_id", "reason", "detail").rows()
    assert [(c, r) for c, r, _ in rejected] == [("F1", "invalid_time")]
    assert "outside the times rated" in rejected[0][2]
    # the real calls after it are rated, not late: the 2100 call set no watermark
    assert result.rated.get_column("cdr_id").to_list() == ["R1", "R2"]
    assert result.state.latest.get_column("latest_month").to_list() == [2026 * 12 + 2]


def test_a_year_9999_or_1970_never_crashes_and_is_invalid_time() -> None:
    result = _rate([_line("F9", "9999-12-30"), _line("F0", "1970-01-02"), _line("R1", "2026-03-02")])
    assert result.rejected.select("cdr_id", "reason").rows() == [("F9", "invalid_time"), ("F0", "invalid_time")]
    assert result.rated.get_column("cdr_id").to_list() == ["R1"]


def test_a_call_far_after_its_line_was_read_is_a_clock_ahead() -> None:
    read = datetime(2026, 3, 2, 12, tzinfo=UTC)
    result = _rate([_line("A1", "2026-03-04"), _line("R1", "2026-03-02")], read_at=read)
    (detail,) = result.rejected.filter(pl.col("cdr_id") == "A1").get_column("detail").to_list()
    assert "more than 24 h after the line was read (2026-03-02T12:00:00Z)" in detail
    assert result.rated.get_column("cdr_id").to_list() == ["R1"]
    # the same lines without a reading time: only the absolute window applies
    assert _rate([_line("A1", "2026-03-04")]).rated.height == 1


def test_a_billsec_longer_than_the_call_is_invalid_time_with_both_values() -> None:
    result = _rate([_line("B1", "2026-03-02", billsec=1250, end_after=125), _line("B2", "2026-03-02", billsec=126, end_after=125)])
    (detail,) = result.rejected.get_column("detail").to_list()
    assert result.rejected.get_column("cdr_id").to_list() == ["B1"]
    assert detail == "billsec 1250 is more than the 125 s from answer_time to end_time (1 s tolerance)"
    assert result.rated.get_column("cdr_id").to_list() == ["B2"]  # 1 s over: switches round


def test_rate_takes_the_bounds_as_options(tmp_path: Path) -> None:
    cdrs = tmp_path / "cdrs.csv"
    cdrs.write_text("\n".join([CDR_HEADER, _line("R1", "2026-03-02"), _line("R2", "2026-03-20")]) + "\n")
    run = run_cdrflow(
        "rate", cdrs, "--plans", BASIC / "plans", "--accounts", BASIC / "accounts.toml", "--out", tmp_path / "out",
        "--latest-call", "2026-03-10T00:00:00+08:00", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rejected = pl.read_csv(tmp_path / "out" / "rejected.csv", infer_schema=False)
    assert rejected.select("cdr_id", "reason").rows() == [("R2", "invalid_time")]
    bad = run_cdrflow(
        "rate", cdrs, "--plans", BASIC / "plans", "--accounts", BASIC / "accounts.toml", "--out", tmp_path / "o2",
        "--latest-call", "2000-01-01T00:00:00Z",
    )  # fmt: skip
    assert bad.returncode == 2 and "must be before" in bad.stderr
