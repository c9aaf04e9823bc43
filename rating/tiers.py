"""Spec 4: graduated tiers over the seconds charged to an account in a month and class."""

from __future__ import annotations

import polars as pl

from rating.running import running_through


def with_tier_start(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with ``tier_start`` (``C``): seconds charged before this call in its
    account, month and class.

    The call then occupies seconds ``[C, C + charged_s)`` of the month's tiers (all the
    account's numbers together). Needs ``charged_before_s`` (earlier batches), ``charged_s``
    and ``k_class``; the running total is :func:`rating.running.running_through` (a batch
    has tens of thousands of account-month-classes of a few calls each).

    Examples
    --------
    >>> frame = pl.DataFrame(
    ...     {"k_class": [7, 7, 9, 7], "charged_s": [60, 30, 60, 10], "charged_before_s": [100, 100, 0, 100]}
    ... )
    >>> with_tier_start(frame)["tier_start"].to_list()
    [100, 160, 0, 190]
    """
    through = running_through(frame, "k_class", {"charged_through": pl.col("charged_s")})
    return frame.with_columns(
        (pl.col("charged_before_s") + through.get_column("charged_through") - pl.col("charged_s")).alias("tier_start")
    )


def tier_seconds(tier_count: int) -> list[pl.Expr]:
    """``tier_seconds_k``: how many of the call's charged seconds fall in tier k."""
    start = pl.col("tier_start")
    end = start + pl.col("charged_s")
    out = []
    for k in range(tier_count):
        low = pl.lit(0, dtype=pl.Int64) if k == 0 else pl.col(f"tier_hi_{k - 1}")
        high = pl.col(f"tier_hi_{k}")
        inside = pl.min_horizontal(end, high) - pl.max_horizontal(start, low)
        out.append(pl.max_horizontal(inside, pl.lit(0)).fill_null(0).alias(f"tier_seconds_{k}"))
    return out


def tier_columns(tier_count: int) -> list[pl.Expr]:
    """``raw`` (price units x seconds) and the first/last tier the call touched (1-based)."""
    seconds = [pl.col(f"tier_seconds_{k}") for k in range(tier_count)]
    raw = pl.sum_horizontal(s * pl.col(f"tier_price_{k}").fill_null(0) for k, s in enumerate(seconds))
    first: pl.Expr = pl.lit(None, dtype=pl.Int32)
    last: pl.Expr = pl.lit(None, dtype=pl.Int32)
    for k in reversed(range(tier_count)):
        first = pl.when(seconds[k] > 0).then(pl.lit(k + 1, dtype=pl.Int32)).otherwise(first)
    for k in range(tier_count):
        last = pl.when(seconds[k] > 0).then(pl.lit(k + 1, dtype=pl.Int32)).otherwise(last)
    return [raw.alias("raw"), first.alias("tier_first"), last.alias("tier_last")]


def round_half_up(numerator: pl.Expr | int, denominator: int | pl.Expr) -> pl.Expr | int:
    """``round_half_up(x / d)`` for non-negative integers: ``(2x + d) // (2d)`` (spec 4);
    on polars expressions or on plain ints (the ledger's fees).

    Examples
    --------
    >>> pl.select(round_half_up(pl.lit(150), 100)).item()
    2
    """
    return (2 * numerator + denominator) // (2 * denominator)
