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


def running_through(frame: pl.DataFrame, key: str, values: dict[str, pl.Expr]) -> pl.DataFrame:
    """Each value summed over the rows of the same ``key`` up to and including the row.

    The result of ``value.cum_sum().over(key)`` (row order is log order), worked out with one
    stable sort of the key instead of a window: a window pays per group, and keys with
    many small groups (an account's day: ~2 calls) make that the dearest step of pricing.

    Examples
    --------
    >>> df = pl.DataFrame({"k": [3, 1, 3, 3, 1], "v": [1, 5, 2, 3, 4]})
    >>> running_through(df, "k", {"v": pl.col("v")})["v"].to_list()
    [1, 5, 3, 6, 9]
    """
    order = frame.select(pl.arg_sort_by(key, maintain_order=True)).to_series()
    ordered = frame.select(pl.col(key), **values)[order]
    keys = ordered.get_column(key)
    starts = keys.ne_missing(keys.shift(1))  # True on the first row of each key's run
    through = ordered.select(
        (pl.col(c).cum_sum() - pl.when(starts).then(pl.col(c).cum_sum() - pl.col(c)).forward_fill()).alias(c)
        for c in values
    )
    # Back to row order: the value sorted to position i belongs to row order[i].
    return pl.DataFrame([_unsort(through.get_column(c), order) for c in values])


def _unsort(ordered: pl.Series, order: pl.Series) -> pl.Series:
    """The inverse of ``series[order]``: ``ordered[i]`` goes back to row ``order[i]``."""
    return pl.repeat(None, len(order), dtype=ordered.dtype, eager=True).alias(ordered.name).scatter(order, ordered)


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
