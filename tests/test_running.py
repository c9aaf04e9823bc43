"""Cheaper roads to the same columns: ``running_through`` (a window) and ``calendar_keys``."""

from __future__ import annotations

from datetime import datetime

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from rating.clock import calendar_keys
from rating.running import running_through

_ROWS = st.lists(st.tuples(st.integers(0, 6), st.integers(-1000, 1000)), max_size=60)


@given(_ROWS)
def test_running_through_equals_the_window_it_replaces(rows: list[tuple[int, int]]) -> None:
    frame = pl.DataFrame(rows, schema={"k": pl.Int64, "v": pl.Int64}, orient="row")
    values = {"through": pl.col("v"), "priced": (pl.col("v") > 0).cast(pl.Int32)}
    got = running_through(frame, "k", values)
    expected = frame.select(*(expr.cum_sum().over("k").alias(name) for name, expr in values.items()))
    assert got.equals(expected)
    assert got.schema == expected.schema


def test_running_through_keeps_log_order_within_a_key() -> None:
    # Equal keys far apart: a sort that is not stable would add them up out of order.
    frame = pl.DataFrame({"k": [2, 1, 2, 1, 2] * 2000, "v": list(range(10_000))})
    got = running_through(frame, "k", {"v": pl.col("v")})["v"]
    assert got.equals(frame.select(pl.col("v").cum_sum().over("k"))["v"])


@given(st.lists(st.datetimes(min_value=datetime(1901, 1, 1), max_value=datetime(2199, 12, 31)), max_size=40))
def test_calendar_keys_are_the_datetime_fields(instants: list[datetime]) -> None:
    frame = pl.DataFrame({"local": instants}, schema={"local": pl.Datetime("us")})
    local = pl.col("local")
    expected = frame.select(
        local.dt.date().alias("local_day"),
        (local.dt.year().cast(pl.Int64) * 12 + local.dt.month().cast(pl.Int64) - 1).alias("month_key"),
        (local.dt.hour().cast(pl.Int32) * 3600 + local.dt.minute().cast(pl.Int32) * 60
         + local.dt.second().cast(pl.Int32)).alias("day_second"),
    )  # fmt: skip
    assert frame.select(calendar_keys()).equals(expected)
