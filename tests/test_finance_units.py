"""The finance reports' pure parts: minutes, months, area names, retention's cutoff."""

from __future__ import annotations

from datetime import date

import pytest

from schemas.area_names import area_names
from streams.finance.reports import (
    DURATION_BUCKETS,
    ReportError,
    _bucket_sql,
    _split_top_level,
    format_minutes,
    month_range,
)
from streams.finance.retention import _literal, _month, cutoff_month


@pytest.mark.parametrize(
    ("seconds", "minutes"),
    [(0, "0.00"), (60, "1.00"), (90, "1.50"), (61, "1.02"), (59, "0.98"), (3, "0.05"), (1, "0.02"), (7_200_030, "120000.50")],
)
def test_minutes_have_two_decimals_rounded_half_up(seconds: int, minutes: str) -> None:
    assert format_minutes(seconds) == minutes


def test_a_month_is_its_first_day_to_the_first_of_the_next() -> None:
    assert month_range("2026-02") == (date(2026, 2, 1), date(2026, 3, 1))
    assert month_range("2026-12") == (date(2026, 12, 1), date(2027, 1, 1))


@pytest.mark.parametrize("month", ["2026-13", "2026-3", "March", "2026-03-01", ""])
def test_a_bad_month_is_refused_naming_the_option(month: str) -> None:
    with pytest.raises(ReportError, match="--month: expected YYYY-MM"):
        month_range(month)


@pytest.mark.parametrize(
    ("area", "names"),
    [
        ("010", ("Beijing", "Beijing")),
        ("021", ("Shanghai", "Shanghai")),
        ("0755", ("Shenzhen", "Guangdong")),
        ("0571", ("Hangzhou", "Zhejiang")),
        ("0991", ("Urumqi", "Xinjiang")),
        ("+44", ("", "International: United Kingdom")),
        ("0081", ("", "International: Japan")),
        ("", ("", "unknown")),
        ("0000", ("", "International")),  # 00 marks an international caller (spec 2.3)
        ("0123", ("", "unknown")),
        ("abc", ("", "unknown")),
    ],
)
def test_area_codes_name_their_city_and_province(area: str, names: tuple[str, str]) -> None:
    assert area_names(area) == names


def test_the_duration_buckets_cover_every_duration_once() -> None:
    assert [low for _, low in DURATION_BUCKETS] == [0, 30, 60, 180, 600]
    assert _bucket_sql() == "multiIf(billsec < 30, 0, billsec < 60, 1, billsec < 180, 2, billsec < 600, 3, 4)"


def test_keys_split_at_top_level_commas_only() -> None:
    assert _split_top_level("local_day, class") == ["local_day", " class"]
    assert len(_split_top_level("multiIf(a < 1, 0, 1)")) == 1


@pytest.mark.parametrize(
    ("today", "keep", "cutoff"),
    [(date(2026, 11, 25), 24, 202411), (date(2026, 1, 1), 24, 202401), (date(2026, 1, 31), 25, 202312), (date(2026, 3, 15), 36, 202303)],
)
def test_retention_keeps_the_current_month_and_the_n_before(today: date, keep: int, cutoff: int) -> None:
    assert cutoff_month(today, keep) == cutoff


def test_partition_values_read_as_months_and_sql_literals() -> None:
    assert _month("202603") == 202603 and _month("'2026-03-01'") == 202603
    assert _literal("202603") == "202603" and _literal("'2026-03-01'") == "'2026-03-01'"
    with pytest.raises(ValueError):
        _literal("'2026-03-01'; DROP TABLE x")


def test_a_report_without_clickhouse_fails_with_a_reason_and_no_traceback(tmp_path) -> None:
    import os
    import subprocess

    from streams.stack.servers import free_ports
    from tests.conftest import CDRFLOW

    env = {**os.environ, "CDRFLOW_CLICKHOUSE_URL": f"clickhouse://default@127.0.0.1:{free_ports(1)[0]}/cdrflow"}
    done = subprocess.run(
        [str(CDRFLOW), "report", "revenue", "--from", "2026-03-01", "--to", "2026-03-31", "--by", "day"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 1
    assert "does not answer" in done.stderr and "cdrflow up" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    done = subprocess.run(
        [str(CDRFLOW), "report", "revenue", "--from", "2026-03-01", "--to", "March", "--by", "day"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 2 and "--to: expected a day as YYYY-MM-DD" in done.stderr
