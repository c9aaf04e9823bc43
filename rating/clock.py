"""Spec 1 and 4 step 5: local day, month and off-peak in the plan's timezone."""

from __future__ import annotations

import polars as pl

from rating.catalog import Catalog


def local_time(timezones: dict[str, list[int]]) -> pl.Expr:
    """The charge instant as naive local wall-clock time in the timezone of the row's plan."""
    charge = pl.col("charge")
    expr: pl.Expr = pl.lit(None, dtype=pl.Datetime("us"))
    for name, plan_indices in timezones.items():
        local = charge.dt.convert_time_zone(name).dt.replace_time_zone(None)
        expr = pl.when(pl.col("plan_idx").is_in(plan_indices)).then(local).otherwise(expr)
    return expr.alias("local")


def calendar_keys() -> list[pl.Expr]:
    """``local_day``, ``month_key`` (year * 12 + month - 1) and ``day_second`` of ``local``."""
    local = pl.col("local")
    return [
        local.dt.date().alias("local_day"),
        (local.dt.year().cast(pl.Int64) * 12 + local.dt.month().cast(pl.Int64) - 1).alias("month_key"),
        (
            local.dt.hour().cast(pl.Int32) * 3600
            + local.dt.minute().cast(pl.Int32) * 60
            + local.dt.second().cast(pl.Int32)
        ).alias("day_second"),
    ]


def offpeak(catalog: Catalog) -> pl.Expr:
    """Whether the charge time is off-peak under the row's plan version (spec 4).

    Inside a window ``[start, end)`` of local time (``end <= start`` wraps past midnight),
    on a Saturday or Sunday when ``weekends``, or on a listed holiday.
    """
    second = pl.col("day_second")
    expr: pl.Expr = pl.lit(False)
    version_idx = 0
    for plan in catalog.plans:
        for version in plan.versions:
            rules = version.offpeak
            if rules is not None:
                hit: pl.Expr = pl.lit(False)
                for start, end in rules.windows:
                    if start < end:
                        hit = hit | ((second >= start) & (second < end))
                    else:
                        hit = hit | (second >= start) | (second < end)
                if rules.weekends:
                    hit = hit | (pl.col("local").dt.weekday() >= 6)
                if rules.holidays:
                    hit = hit | pl.col("local_day").is_in(rules.holidays)
                expr = pl.when(pl.col("version_idx") == version_idx).then(hit).otherwise(expr)
            version_idx += 1
    return expr.alias("offpeak")
