"""Running totals in log order: how sequential spec rules become column operations."""

from __future__ import annotations

import polars as pl


def running_before(value: pl.Expr, *keys: str) -> pl.Expr:
    """Sum of ``value`` over the earlier rows of the same group, in row (log) order.

    Examples
    --------
    >>> df = pl.DataFrame({"k": ["a", "b", "a", "a"], "v": [1, 5, 2, 3]})
    >>> df.select(running_before(pl.col("v"), "k"))["v"].to_list()
    [0, 0, 1, 3]
    """
    return value.cum_sum().over(keys) - value


def seeded_take(room: pl.Expr, wanted: pl.Expr) -> pl.Expr:
    """``min(wanted, max(0, room))``: the part of a call that still fits under a limit.

    With ``room = limit - used_before_batch - running_before(taken)``, this reproduces the
    sequential rule ``take = min(wanted, max(0, limit - used)); used += take`` of spec 4
    for the package allowance and the daily cap alike.

    Examples
    --------
    >>> pl.select(seeded_take(pl.lit(30), pl.lit(60))).item()
    30
    """
    return pl.min_horizontal(wanted, pl.max_horizontal(room, pl.lit(0)))
