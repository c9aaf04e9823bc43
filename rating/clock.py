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


_US_PER_DAY = 86_400_000_000


def month_key(day: pl.Expr) -> pl.Expr:
    """The month key (year * 12 + month - 1) of a date: how months are named in the state.

    Examples
    --------
    >>> from datetime import date
    >>> pl.select(month_key(pl.lit(date(2026, 3, 31)))).item()
    24314
    """
    return day.dt.year().cast(pl.Int64) * 12 + day.dt.month().cast(pl.Int64) - 1


def calendar_keys() -> list[pl.Expr]:
    """``local_day``, ``month_key`` (year * 12 + month - 1) and ``day_second`` of ``local``.

    Worked out from the microseconds since the epoch (a floor division gives the day, the
    rest the second of the day), which is cheaper than taking the datetime's fields; only
    the month needs a calendar, from the date.

    Examples
    --------
    >>> from datetime import datetime
    >>> frame = pl.DataFrame({"local": [datetime(2026, 3, 1, 7, 59, 59, 999999), datetime(1969, 12, 31, 23, 0)]})
    >>> frame.select(calendar_keys()).rows()
    [(datetime.date(2026, 3, 1), 24314, 28799), (datetime.date(1969, 12, 31), 23639, 82800)]
    """
    us = pl.col("local").dt.epoch("us")
    day = us // _US_PER_DAY  # floor division: the day of an instant before 1970 too
    local_day = day.cast(pl.Int32).cast(pl.Date)
    return [
        local_day.alias("local_day"),
        month_key(local_day).alias("month_key"),
        ((us - day * _US_PER_DAY) // 1_000_000).cast(pl.Int32).alias("day_second"),
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
