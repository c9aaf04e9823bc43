"""Spec 4: the daily spend cap, applied after the minimum uplift."""

from __future__ import annotations

import polars as pl

from rating.running import running_before, seeded_take


def capped_amount() -> pl.Expr:
    """What the account pays once the day's cap is applied.

    Needs ``pre`` (base - discount + uplift, 0 when not rated), ``daily_cap`` (null: no
    cap) and ``spent_before`` (charged that day before this batch).
    """
    room = pl.col("daily_cap") - pl.col("spent_before") - running_before(pl.col("pre"), "account_id", "local_day")
    return (
        pl.when(pl.col("daily_cap").is_null())
        .then(pl.col("pre"))
        .otherwise(seeded_take(room, pl.col("pre")))
        .alias("amount")
    )


def cap_reached() -> pl.Expr:
    """The call that reaches the day's cap: the first of the day whose price met the cap.

    spec 5: raised once per account and day. A call with a price (pre > 0) after which
    ``spent >= cap`` is where the cap bites; the first such call of the day raises it,
    unless an earlier batch already did (``cap_alerted``).
    """
    spent_after = pl.col("spent_before") + running_before(pl.col("amount"), "account_id", "local_day") + pl.col("amount")
    bites = (pl.col("pre") > 0) & pl.col("daily_cap").is_not_null() & (spent_after >= pl.col("daily_cap"))
    first_bite = bites & (bites.cast(pl.Int32).cum_sum().over("account_id", "local_day") == 1)
    return (first_bite & ~pl.col("cap_alerted")).fill_null(False).alias("cap_reached")
