"""Spec 4: the package allowance, shared by local and long-distance calls of a month."""

from __future__ import annotations

import polars as pl

from rating.running import running_before, seeded_take


def allowance_s() -> pl.Expr:
    """Seconds of the call covered by the month's package.

    Needs ``billable_s``, ``uses_allowance``, ``included_s`` (the month version's pool) and
    ``allowance_used_s`` (consumed before this batch). ``used`` only ever grows by what the
    pool still held, so ``used_before_call = min(pool, used_before_batch + running billable)``.
    """
    wanted = pl.when(pl.col("uses_allowance")).then(pl.col("billable_s")).otherwise(0)
    room = (
        pl.col("included_s").fill_null(0)
        - pl.col("allowance_used_s")
        - running_before(wanted, "k_month")
    )
    return seeded_take(room, wanted).alias("allowance_s")
