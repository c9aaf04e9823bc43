"""Spec 4: graduated tiers over the seconds charged to an account in a month and class."""

from __future__ import annotations

import polars as pl

from rating.running import running_before


def tier_columns(tier_count: int) -> list[pl.Expr]:
    """``raw`` (price units x seconds) and the first/last tier the call touched (1-based).

    The call occupies seconds ``[C, C + charged_s)`` of the month, with ``C`` the seconds
    charged before it in its month and class (all the account's numbers together).
    Needs ``charged_s``, ``charged_before_s`` and the rate's ``tier_hi_k``/``tier_price_k``.
    """
    start = pl.col("charged_before_s") + running_before(pl.col("charged_s"), "account_id", "month_key", "class")
    end = start + pl.col("charged_s")
    raw: pl.Expr = pl.lit(0, dtype=pl.Int64)
    first: pl.Expr = pl.lit(None, dtype=pl.Int32)
    last: pl.Expr = pl.lit(None, dtype=pl.Int32)
    for k in range(tier_count):
        low = pl.lit(0, dtype=pl.Int64) if k == 0 else pl.col(f"tier_hi_{k - 1}")
        high = pl.col(f"tier_hi_{k}")
        seconds = pl.max_horizontal(pl.min_horizontal(end, high) - pl.max_horizontal(start, low), pl.lit(0))
        raw = raw + seconds * pl.col(f"tier_price_{k}")
        used = seconds > 0
        first = pl.when(used & first.is_null()).then(pl.lit(k + 1, dtype=pl.Int32)).otherwise(first)
        last = pl.when(used).then(pl.lit(k + 1, dtype=pl.Int32)).otherwise(last)
    return [raw.alias("raw"), first.alias("tier_first"), last.alias("tier_last")]


def round_half_up(numerator: pl.Expr, denominator: int | pl.Expr) -> pl.Expr:
    """``round_half_up(x / d)`` for non-negative integers: ``(2x + d) // (2d)`` (spec 4).

    Examples
    --------
    >>> pl.select(round_half_up(pl.lit(150), 100)).item()
    2
    """
    return (2 * numerator + denominator) // (2 * denominator)
