"""Plans and accounts compiled into lookup columns the engine gathers from.

Built once per tariff load (a handful of plans, thousands of accounts), so plain Python
here is fine: nothing in this module runs per CDR. The engine looks facts up by integer
index (``account_idx``, ``version_idx``, ``rate_idx``) with ``gather``, which costs one
column each, instead of joining tables into its wide batch frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import polars as pl

from rating.bounds import DEFAULT_TIME_BOUNDS, TimeBounds
from rating.horizon import DEFAULT_HORIZON_MONTHS
from rating.ownership import OWNERS_SCHEMA, owners_frame
from tariffs import Plan, Tariffs
from tariffs.catalogue import CatalogueRules
from tariffs.models import ANY_CLASS, opening_package

#: Bound of the unbounded last tier, in seconds: far beyond any month of calls.
UNBOUNDED_S = 1 << 50
#: Rate keys pack (version, class, number prefix): prefixes have at most 10 digits.
_PREFIX_SPAN = 10**10
CLASS_CODES = {"local": 0, "long_distance": 1, "international": 2}
#: The rate key's class of a ``class = "*"`` rate (issue 23): it matches every class.
ANY_CLASS_CODE = 3


@dataclass(frozen=True)
class Catalog:
    """The tariff catalogue as lookup columns, plus the plan models for calendar rules.

    Examples
    --------
    >>> from tariffs import load_tariffs
    >>> catalog = Catalog.from_tariffs(
    ...     load_tariffs("tests/vectors/basic/plans", "tests/vectors/basic/accounts.toml")
    ... )
    >>> catalog.accounts.filter(pl.col("account_id") == "A001")["plan_id"].item()
    'std-100'
    """

    plans: tuple[Plan, ...]
    #: called -> account_idx
    numbers: pl.DataFrame
    #: one row per account, row number = account_idx
    accounts: pl.DataFrame
    #: one row per plan version, row number = version_idx
    versions: pl.DataFrame
    #: one row per rate, row number = rate_idx; tier_hi_k / tier_price_k padded to tier_count
    rates: pl.DataFrame
    #: per segment length (longest first): rate key -> rate_idx
    rate_keys: tuple[tuple[int, pl.Series, pl.Series], ...]
    tier_count: int
    #: Months before an account's latest charge month that are still judged (rating.horizon):
    #: an operator setting, not part of a plan, so it travels with the catalogue rating uses.
    horizon_months: int = DEFAULT_HORIZON_MONTHS
    #: issue 25: the owners over time of numbers moved between accounts (rating.ownership);
    #: empty when none was
    owners: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=OWNERS_SCHEMA))
    #: issue 25: the catalogue's own rules (catalogue.toml): the unusual_calls alert's
    rules: CatalogueRules = field(default_factory=CatalogueRules)
    #: The charge times rated at all (rating.bounds): also an operator setting.
    time_bounds: TimeBounds = DEFAULT_TIME_BOUNDS
    _month_cache: dict[tuple[int, int], int | None] = field(default_factory=dict, compare=False)
    _day_cache: dict[tuple[int, date], int | None] = field(default_factory=dict, compare=False)

    @classmethod
    def from_tariffs(
        cls, tariffs: Tariffs, *, horizon_months: int = DEFAULT_HORIZON_MONTHS, time_bounds: TimeBounds = DEFAULT_TIME_BOUNDS
    ) -> Catalog:
        """Compile validated tariffs (``tariffs.load_tariffs``) into lookup columns.

        ``horizon_months``: how many months before an account's latest charge month are
        still rated (older calls are ``late``; docs/rules.md). ``time_bounds``: the charge
        times rated at all (others are ``invalid_time``; rating.bounds).
        """
        if horizon_months < 0:
            raise ValueError(f"horizon_months must be 0 or more, not {horizon_months}")
        plans = tuple(tariffs.plans.values())
        plan_idx = {plan.id: index for index, plan in enumerate(plans)}
        # issue 23: an account on a package plan bought it when it was opened: the price
        # left its opening balance, the credit lasts until the end of the term.
        bought = [opening_package(a, tariffs.plans[a.plan]) for a in tariffs.accounts]
        accounts = pl.DataFrame(
            {
                "account_id": [a.id for a in tariffs.accounts],
                "plan_idx": [plan_idx[a.plan] for a in tariffs.accounts],
                "plan_id": [a.plan for a in tariffs.accounts],
                "opening_balance": [a.opening_balance for a in tariffs.accounts],
                "low_balance_threshold": [a.low_balance_threshold for a in tariffs.accounts],
                "account_daily_cap": [a.daily_cap for a in tariffs.accounts],
                "package_price": [b[0].price if b else 0 for b in bought],
                "opening_credit": [b[0].granted if b else 0 for b in bought],
                "opening_credit_expires": [b[1] if b else None for b in bought],
                "opening_credit_refund": [b[0].unused == "refund" if b else False for b in bought],
            },
            schema={
                "account_id": pl.String,
                "plan_idx": pl.Int32,
                "plan_id": pl.String,
                "opening_balance": pl.Int64,
                "low_balance_threshold": pl.Int64,
                "account_daily_cap": pl.Int64,
                "package_price": pl.Int64,
                "opening_credit": pl.Int64,
                "opening_credit_expires": pl.Datetime("us", "UTC"),
                "opening_credit_refund": pl.Boolean,
            },
        )
        numbers = pl.DataFrame(
            [(n, index) for index, a in enumerate(tariffs.accounts) for n in a.numbers],
            schema={"called": pl.String, "account_idx": pl.Int64},
            orient="row",
        )
        tier_count = max(
            (len(r.tiers) for p in plans for v in p.versions for r in v.rates), default=1
        )
        version_rows = []
        rate_rows = []
        keys: dict[int, list[tuple[int, int]]] = {}
        for plan in plans:
            for version_no, version in enumerate(plan.versions):
                version_idx = len(version_rows)
                version_rows.append(
                    (
                        plan_idx[plan.id],
                        version_no,
                        version.effective_from,
                        version.effective_from.isoformat(),
                        version.per_call_minimum,
                        version.increment.first,
                        version.increment.next,
                        0 if version.offpeak is None else version.offpeak.discount_percent,
                        version.unknown_caller_class,
                    )
                )
                for rate in version.rates:
                    bounds = [UNBOUNDED_S if t.up_to_minutes is None else t.up_to_minutes * 60 for t in rate.tiers]
                    bounds += [UNBOUNDED_S] * (tier_count - len(bounds))
                    prices = [t.per_minute for t in rate.tiers] + [0] * (tier_count - len(rate.tiers))
                    prefix = 0 if rate.segment == "*" else int(rate.segment)
                    any_class = rate.call_class == ANY_CLASS
                    code = ANY_CLASS_CODE if any_class else CLASS_CODES[rate.call_class]
                    key = rate_key(version_idx, code, prefix)
                    keys.setdefault(rate.segment_length, []).append((key, len(rate_rows)))
                    rate_rows.append((rate.segment, any_class, *bounds, *prices))
        versions = pl.DataFrame(
            version_rows,
            schema={
                "plan_idx": pl.Int32,
                "version_no": pl.Int32,
                "effective_from": pl.Datetime("us", "UTC"),
                "plan_version": pl.String,
                "per_call_minimum": pl.Int64,
                "increment_first": pl.Int64,
                "increment_next": pl.Int64,
                "offpeak_percent": pl.Int64,
                "unknown_caller_class": pl.String,
            },
            orient="row",
        )
        rates = pl.DataFrame(
            rate_rows,
            schema={
                "rate_segment": pl.String,
                "rate_any_class": pl.Boolean,
                **{f"tier_hi_{k}": pl.Int64 for k in range(tier_count)},
                **{f"tier_price_{k}": pl.Int64 for k in range(tier_count)},
            },
            orient="row",
        )
        rate_keys = tuple(
            (
                length,
                pl.Series([k for k, _ in pairs], dtype=pl.Int64),
                pl.Series([i for _, i in pairs], dtype=pl.Int64),
            )
            for length, pairs in sorted(keys.items(), reverse=True)
        )
        return cls(
            plans=plans,
            numbers=numbers,
            accounts=accounts,
            versions=versions,
            rates=rates,
            rate_keys=rate_keys,
            tier_count=tier_count,
            horizon_months=horizon_months,
            owners=owners_frame(tariffs.owners()),
            rules=tariffs.rules,
            time_bounds=time_bounds,
        )

    @property
    def has_credit(self) -> bool:
        """Whether an account of this catalogue opens with package credit (issue 23)."""
        return bool(self.accounts.get_column("opening_credit_expires").is_not_null().any())

    @property
    def timezones(self) -> dict[str, list[int]]:
        """Each timezone with the indices of the plans that use it."""
        zones: dict[str, list[int]] = {}
        for index, plan in enumerate(self.plans):
            zones.setdefault(plan.timezone, []).append(index)
        return zones

    def month_included_s(self, keys: pl.Series) -> tuple[pl.Series, pl.Series]:
        """``plan_idx * 2**20 + month_key`` -> the month version's package in seconds.

        spec 4: monthly items come from the version in force at the start of the local
        month, or, if none was, the first version that took effect during that month.
        """
        found = []
        for key in keys.unique().drop_nulls().to_list():
            plan_index, month_key = divmod(key, 1 << 20)
            cache_key = (plan_index, month_key)
            if cache_key not in self._month_cache:
                plan = self.plans[plan_index]
                year, month0 = divmod(month_key, 12)
                start = datetime(year, month0 + 1, 1, tzinfo=plan.zone)
                next_year, next_month0 = divmod(month_key + 1, 12)
                end = datetime(next_year, next_month0 + 1, 1, tzinfo=plan.zone)
                self._month_cache[cache_key] = _version_for_period(plan, start, end)
            version_no = self._month_cache[cache_key]
            if version_no is not None:
                found.append((key, self.plans[plan_index].versions[version_no].included_minutes * 60))
        return _lookup(found)

    def day_caps(self, keys: pl.Series) -> tuple[pl.Series, pl.Series]:
        """``plan_idx * 2**20 + day number`` -> the plan's ``daily_cap`` that day (spec 4)."""
        found = []
        for key in keys.unique().drop_nulls().to_list():
            plan_index, day_number = divmod(key, 1 << 20)
            day = date(1970, 1, 1) + timedelta(days=day_number)
            cache_key = (plan_index, day)
            if cache_key not in self._day_cache:
                plan = self.plans[plan_index]
                start = datetime(day.year, day.month, day.day, tzinfo=plan.zone)
                following = day + timedelta(days=1)
                end = datetime(following.year, following.month, following.day, tzinfo=plan.zone)
                self._day_cache[cache_key] = _version_for_period(plan, start, end)
            version_no = self._day_cache[cache_key]
            cap = None if version_no is None else self.plans[plan_index].versions[version_no].daily_cap
            if cap is not None:
                found.append((key, cap))
        return _lookup(found)


def rate_key(version_idx: int | pl.Expr, class_code: int | pl.Expr, prefix: int | pl.Expr) -> int | pl.Expr:
    """One Int64 naming (version, class, number prefix) for the rate lookup (class codes
    0-2, and ``ANY_CLASS_CODE`` for a ``*`` rate)."""
    return (version_idx * 4 + class_code) * _PREFIX_SPAN + prefix


def _lookup(pairs: list[tuple[int, int]]) -> tuple[pl.Series, pl.Series]:
    return (
        pl.Series([k for k, _ in pairs], dtype=pl.Int64),
        pl.Series([v for _, v in pairs], dtype=pl.Int64),
    )


def _version_for_period(plan: Plan, start: datetime, end: datetime) -> int | None:
    """Index of the version in force at ``start``, else the first effective in [start, end)."""
    in_force = None
    for index, version in enumerate(plan.versions):
        if version.effective_from <= start:
            in_force = index
        elif version.effective_from < end:
            return index if in_force is None else in_force
        else:
            break
    return in_force
