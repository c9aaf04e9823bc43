"""``rating.running.running_through`` is ``cum_sum().over(key)`` by another road."""

from __future__ import annotations

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

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
