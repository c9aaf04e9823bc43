"""Plans and accounts compiled into polars tables the engine joins against.

Built once per tariff load (a handful of plans, thousands of accounts), so plain Python
here is fine: nothing in this module runs per CDR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import polars as pl

from tariffs import Plan, PlanVersion, Tariffs

#: Bound of the unbounded last tier, in seconds: far beyond any month of calls.
UNBOUNDED_S = 1 << 50


@dataclass(frozen=True)
class Catalog:
    """The tariff catalogue as tables, plus the plan models for calendar rules.

    Examples
    --------
    >>> from tariffs import load_tariffs
    >>> catalog = Catalog.from_tariffs(
    ...     load_tariffs("../shared/vectors/basic/plans", "../shared/vectors/basic/accounts.toml")
    ... )
    >>> catalog.numbers.filter(pl.col("called") == "4008001234")["account_id"].item()
    'A001'
    """

    plans: dict[str, Plan]
    numbers: pl.DataFrame  # called, account_id
    accounts: pl.DataFrame  # account_id, plan_id, timezone, opening_balance, low_balance_threshold, account_daily_cap
    versions: pl.DataFrame  # plan_id, version_no, effective_from, ... one row per plan version
    rates: pl.DataFrame  # plan_id, version_no, class, segment, segment_length, tier_hi_k, tier_price_k
    tier_count: int
    segment_lengths: tuple[int, ...]
    timezones: tuple[str, ...]
    _month_cache: dict[tuple[str, int], int | None] = field(default_factory=dict, compare=False)
    _day_cache: dict[tuple[str, date], int | None] = field(default_factory=dict, compare=False)

    @classmethod
    def from_tariffs(cls, tariffs: Tariffs) -> Catalog:
        """Compile validated tariffs (``tariffs.load_tariffs``) into engine tables."""
        numbers = pl.DataFrame(
            [(n, a.id) for a in tariffs.accounts for n in a.numbers],
            schema={"called": pl.String, "account_id": pl.String},
            orient="row",
        )
        accounts = pl.DataFrame(
            [
                (
                    a.id,
                    a.plan,
                    tariffs.plans[a.plan].timezone,
                    a.opening_balance,
                    a.low_balance_threshold,
                    a.daily_cap,
                )
                for a in tariffs.accounts
            ],
            schema={
                "account_id": pl.String,
                "plan_id": pl.String,
                "timezone": pl.String,
                "opening_balance": pl.Int64,
                "low_balance_threshold": pl.Int64,
                "account_daily_cap": pl.Int64,
            },
            orient="row",
        )
        tier_count = max(
            (len(r.tiers) for p in tariffs.plans.values() for v in p.versions for r in v.rates),
            default=1,
        )
        version_rows = []
        rate_rows = []
        for plan in tariffs.plans.values():
            for version_no, version in enumerate(plan.versions):
                version_rows.append(_version_row(plan, version_no, version))
                for rate in version.rates:
                    bounds = [
                        UNBOUNDED_S if t.up_to_minutes is None else t.up_to_minutes * 60
                        for t in rate.tiers
                    ]
                    bounds += [UNBOUNDED_S] * (tier_count - len(bounds))
                    prices = [t.per_minute for t in rate.tiers] + [0] * (tier_count - len(rate.tiers))
                    rate_rows.append(
                        (plan.id, version_no, rate.call_class, rate.segment, rate.segment_length, len(rate.tiers), *bounds, *prices)
                    )
        versions = pl.DataFrame(
            version_rows,
            schema={
                "plan_id": pl.String,
                "version_no": pl.Int32,
                "effective_from": pl.Datetime("us", "UTC"),
                "plan_version": pl.String,
                "per_call_minimum": pl.Int64,
                "increment_first": pl.Int64,
                "increment_next": pl.Int64,
                "offpeak_percent": pl.Int64,
            },
            orient="row",
        ).sort("plan_id", "effective_from")
        rates = pl.DataFrame(
            rate_rows,
            schema={
                "plan_id": pl.String,
                "version_no": pl.Int32,
                "class": pl.String,
                "rate_segment": pl.String,
                "segment_length": pl.Int32,
                "tier_count": pl.Int32,
                **{f"tier_hi_{k}": pl.Int64 for k in range(tier_count)},
                **{f"tier_price_{k}": pl.Int64 for k in range(tier_count)},
            },
            orient="row",
        )
        return cls(
            plans=dict(tariffs.plans),
            numbers=numbers,
            accounts=accounts,
            versions=versions,
            rates=rates,
            tier_count=tier_count,
            segment_lengths=tuple(sorted(set(rates["segment_length"].to_list()), reverse=True)),
            timezones=tuple(sorted({p.timezone for p in tariffs.plans.values()})),
        )

    def month_versions(self, keys: pl.DataFrame) -> pl.DataFrame:
        """``plan_id, month_key`` -> ``month_version_no`` and the month's ``included_s``.

        spec 4: monthly items come from the version in force at the start of the local
        month, or, if none was, the first version that took effect during that month.
        """
        rows = []
        for plan_id, month_key in keys.select("plan_id", "month_key").unique().iter_rows():
            cache_key = (plan_id, month_key)
            if cache_key not in self._month_cache:
                plan = self.plans[plan_id]
                year, month0 = divmod(month_key, 12)
                start = datetime(year, month0 + 1, 1, tzinfo=plan.zone)
                nyear, nmonth0 = divmod(month_key + 1, 12)
                end = datetime(nyear, nmonth0 + 1, 1, tzinfo=plan.zone)
                self._month_cache[cache_key] = _version_for_period(plan, start, end)
            version_no = self._month_cache[cache_key]
            included = None if version_no is None else self.plans[plan_id].versions[version_no].included_minutes * 60
            rows.append((plan_id, month_key, included))
        return pl.DataFrame(
            rows,
            schema={"plan_id": pl.String, "month_key": pl.Int32, "included_s": pl.Int64},
            orient="row",
        )

    def day_caps(self, keys: pl.DataFrame) -> pl.DataFrame:
        """``plan_id, local_day`` -> the plan's ``daily_cap`` of that day's version (spec 4)."""
        rows = []
        for plan_id, day in keys.select("plan_id", "local_day").unique().iter_rows():
            cache_key = (plan_id, day)
            if cache_key not in self._day_cache:
                plan = self.plans[plan_id]
                start = datetime(day.year, day.month, day.day, tzinfo=plan.zone)
                following = day + timedelta(days=1)
                end = datetime(following.year, following.month, following.day, tzinfo=plan.zone)
                self._day_cache[cache_key] = _version_for_period(plan, start, end)
            version_no = self._day_cache[cache_key]
            cap = None if version_no is None else self.plans[plan_id].versions[version_no].daily_cap
            rows.append((plan_id, day, cap))
        return pl.DataFrame(
            rows,
            schema={"plan_id": pl.String, "local_day": pl.Date, "plan_daily_cap": pl.Int64},
            orient="row",
        )


def _version_row(plan: Plan, version_no: int, version: PlanVersion) -> tuple:
    offpeak = version.offpeak
    return (
        plan.id,
        version_no,
        version.effective_from,
        version.effective_from.isoformat(),
        version.per_call_minimum,
        version.increment.first,
        version.increment.next,
        0 if offpeak is None else offpeak.discount_percent,
    )


def _version_for_period(plan: Plan, start: datetime, end: datetime) -> int | None:
    """Index of the version in force at ``start``, else the first effective in [start, end)."""
    # ZoneInfo datetimes compare as instants, so plan versions in any offset work.
    in_force = None
    for index, version in enumerate(plan.versions):
        if version.effective_from <= start:
            in_force = index
        elif version.effective_from < end:
            return index if in_force is None else in_force
        else:
            break
    return in_force
