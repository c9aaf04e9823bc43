"""Spec 4: the daily spend cap, applied after the minimum uplift; spec 5: its alert."""

from __future__ import annotations

import polars as pl

from rating.running import running_through, seeded_take


def day_running_totals(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with running totals per account and local day (``k_day``), in log order.

    ``pre_through``: sum of ``pre`` (base - discount + uplift, 0 when not rated) up to and
    including this call; ``priced_through``: how many calls so far had a price.
    """
    totals = running_through(
        frame, "k_day", {"pre_through": pl.col("pre"), "priced_through": (pl.col("pre") > 0).cast(pl.Int32)}
    )
    return frame.with_columns(totals.get_columns())


def capped_amount() -> pl.Expr:
    """What the account pays once the day's cap is applied.

    Needs ``pre``, ``pre_through``, ``daily_cap`` (null: no cap) and ``spent_before``
    (charged that day before this batch).
    """
    room = pl.col("daily_cap") - pl.col("spent_before") - (pl.col("pre_through") - pl.col("pre"))
    return (
        pl.when(pl.col("daily_cap").is_null())
        .then(pl.col("pre"))
        .otherwise(seeded_take(room, pl.col("pre")))
        .alias("amount")
    )


def spent_after() -> pl.Expr:
    """``spent`` of the call's account and day once the call is charged.

    ``spent`` only grows by what the cap still allowed, so after a call it is
    ``min(cap, spent_before + pre_through)``, never below what earlier batches spent.
    """
    uncapped = pl.col("spent_before") + pl.col("pre_through")
    return (
        pl.when(pl.col("daily_cap").is_null())
        .then(uncapped)
        .otherwise(pl.max_horizontal(pl.col("spent_before"), pl.min_horizontal(pl.col("daily_cap"), uncapped)))
        .alias("spent_after")
    )


def cap_reached() -> pl.Expr:
    """The call that reaches the day's cap: the first of the day whose price met the cap.

    spec 5: raised once per account and day. A call with a price (pre > 0) after which
    ``spent >= cap`` bites. ``spent`` never falls within a day, so every later priced call
    bites too, and a bite is the day's first exactly when the priced call before it (whose
    ``spent`` after is this call's ``spent`` before) did not bite: it is the batch's first
    priced call of the day, or ``spent`` before it was still under the cap. An earlier
    batch's bite is remembered in ``cap_alerted``.
    """
    cap = pl.col("daily_cap")
    bites = (pl.col("pre") > 0) & cap.is_not_null() & (pl.col("spent_after") >= cap)
    spent_before_call = pl.col("spent_after") - pl.col("amount")
    first_bite = bites & ((pl.col("priced_through") == 1) | (spent_before_call < cap))
    return (first_bite & ~pl.col("cap_alerted")).fill_null(False).alias("cap_reached")
