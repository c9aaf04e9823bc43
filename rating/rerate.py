"""Rating the months of a period again with a corrected catalogue, and what changes (issue 15).

Pure: frames in, frames out; ``streams.ledger.rerate`` reads the log and ClickHouse and
publishes. The rules are docs/rules.md, "Corrections"; in short:

- the amounts of a call depend only on its own month (allowance, tiers) and day (cap)
  and on the calls of its account before it, so every call of the **months the period
  touches** is rated again, in log order, from an empty state; the calls of the months
  before them (the horizon) are rated too, so that duplicates are judged as they were,
  and their results are dropped;
- nothing is ``late`` in the rerun (:data:`RERUN_HORIZON_MONTHS`): a call billed
  ``late`` whose local day is in the period is rated; one outside the period, and every
  call billed ``account_inactive`` (the lifecycle is not rerated), is left out as billed;
- a call is **changed** when any of :data:`COMPARED_COLUMNS` differs from its billed
  (current) version, or it was billed as a rejection and is rated now; calls of those
  months outside the period that change (tier and allowance positions move) are changed
  too: correcting them is what makes the result equal to a rating with the right
  catalogue from the start;
- balances and alerts follow from :mod:`rating.corrected_history`.

Examples
--------
>>> period = Period(date(2026, 3, 10), date(2026, 4, 2))
>>> period.month_keys(), period.first_month_key()
([24314, 24315], 24314)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Final

import polars as pl

from rating.catalog import Catalog
from rating.clock import month_key
from rating.corrected_history import Billed, Trajectory, alert_changes, corrected_balances
from rating.engine import prepare, rate
from rating.state import RatingState
from schemas.columns import RATED_COLUMNS

#: The horizon of a correction run: nothing is late in it (docs/rules.md, "Corrections").
RERUN_HORIZON_MONTHS: Final[int] = 1200
#: What a correction compares of a call: spec 6's columns and what explains the price
#: (not ``balance``: it follows from the amounts, rating.corrected_history).
COMPARED_COLUMNS: Final[tuple[str, ...]] = (
    *(column for column in RATED_COLUMNS if column not in ("cdr_id", "account_id")),
    "plan_id",
    "plan_version",
    "rate_segment",
    "tier_first",
    "tier_last",
    "daily_cap",
    "offpeak_percent",
)
#: Where a line was read: the key of ``rejected_cdrs`` (and of the log's lines).
LINE_KEY: Final[tuple[str, ...]] = ("ingest_id", "source", "line")
#: Rejections a correction run leaves as they were billed.
_KEPT_REJECTIONS: Final = ("account_inactive",)
_MONTH_KEY = month_key(pl.col("local_day"))


@dataclass(frozen=True)
class Period:
    """Whole local days ``[first, last]`` (each account's plan timezone)."""

    first: date
    last: date

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError(f"the period ends ({self.last}) before it starts ({self.first})")

    def month_keys(self) -> list[int]:
        """The months the period touches (``year * 12 + month - 1``)."""
        return list(range(_month_key(self.first), _month_key(self.last) + 1))

    def first_month_key(self) -> int:
        return _month_key(self.first)

    def holds(self, day: pl.Expr) -> pl.Expr:
        return (day >= self.first) & (day <= self.last)


def _month_key(day: date) -> int:
    return day.year * 12 + day.month - 1


def correction_catalog(catalog: Catalog) -> Catalog:
    """``catalog`` with the horizon of a correction run (nothing is late)."""
    return dataclasses.replace(catalog, horizon_months=RERUN_HORIZON_MONTHS)


@dataclass(frozen=True)
class RerunResult:
    """What the rerun gave for the calls of the correction months.

    ``rated``: rated and unbilled rows (with the batch's origin columns); ``rejected``:
    rejections of the selected accounts; ``caps``: ``account_id, cdr_id, local_day`` of
    each ``daily_cap_reached``.
    """

    rated: pl.DataFrame
    rejected: pl.DataFrame
    caps: pl.DataFrame


class Rerun:
    """The window of the log rated again, chunk after chunk, in log order.

    Parameters
    ----------
    catalog
        The corrected catalogue (``correction_catalog``).
    period
        The correction's period.
    accounts
        The accounts corrected: the rows of others are dropped.
    billed_rejected
        The billed rejections of these accounts: ``account_id, reason`` and
        :data:`LINE_KEY` (which lines were ``late`` or ``account_inactive``).

    Examples
    --------
    >>> from schemas.cdr_csv import parse_csv
    >>> from tariffs import load_tariffs
    >>> vectors = "tests/vectors/basic/"
    >>> catalog = correction_catalog(Catalog.from_tariffs(load_tariffs(vectors + "plans", vectors + "accounts.toml")))
    >>> none = pl.DataFrame(schema={"account_id": pl.String, "reason": pl.String, "ingest_id": pl.String,
    ...                             "source": pl.String, "line": pl.Int64})
    >>> rerun = Rerun(catalog, Period(date(2026, 3, 1), date(2026, 3, 31)), ["A001"], none)
    >>> lines = parse_csv(open(vectors + "cdrs.csv", "rb").read())
    >>> rerun.add(lines.with_columns(source=pl.lit("cdrs.csv"), ingest_id=pl.lit("i1")))
    >>> rerun.result().rated.get_column("account_id").unique().to_list()
    ['A001']
    """

    def __init__(self, catalog: Catalog, period: Period, accounts: Sequence[str], billed_rejected: pl.DataFrame):
        if catalog.horizon_months < RERUN_HORIZON_MONTHS:
            raise ValueError("a correction run rates with correction_catalog(...): nothing may be late in it")
        self.catalog = catalog
        self.period = period
        self.accounts = list(accounts)
        self.months = period.month_keys()
        billed_rejected = billed_rejected.filter(pl.col("account_id").is_in(self.accounts))
        self._kept = billed_rejected.filter(pl.col("reason").is_in(_KEPT_REJECTIONS)).select(LINE_KEY).unique()
        self._late = billed_rejected.filter(pl.col("reason") == "late").select(LINE_KEY).unique()
        self.state = RatingState.empty()
        self._rated: list[pl.DataFrame] = []
        self._rejected: list[pl.DataFrame] = []
        self._caps: list[pl.DataFrame] = []

    def add(self, lines: pl.DataFrame) -> None:
        """Rate the next lines of the window (``rating.rate``'s batch: ``line``, the CDR
        columns, ``framing``, and origin columns ``source``, ``ingest_id``, ...)."""
        lines = self._selected(lines)
        if lines.height == 0:
            return
        result = rate(lines, self.state, self.catalog)
        self.state = result.state
        mine = pl.col("account_id").is_in(self.accounts)
        in_months = _MONTH_KEY.is_in(self.months)
        self._rated.append(result.rated.filter(mine & in_months))
        self._rejected.append(result.rejected.filter(mine))
        self._caps.append(
            result.alerts.filter(mine & in_months & (pl.col("kind") == "daily_cap_reached")).select(
                "account_id", "cdr_id", "local_day"
            )
        )

    def _selected(self, lines: pl.DataFrame) -> pl.DataFrame:
        """The lines without those the correction leaves as billed (docs/rules.md)."""
        left_out = self._kept
        if self._late.height:
            late = lines.join(self._late, on=list(LINE_KEY), how="semi")
            if late.height:
                days = prepare(late, self.catalog).frame.select(*LINE_KEY, "local_day")
                outside = days.filter(~self.period.holds(pl.col("local_day")).fill_null(True)).select(LINE_KEY)
                left_out = pl.concat([left_out, outside])
        if left_out.height == 0:
            return lines
        return lines.join(left_out, on=list(LINE_KEY), how="anti", maintain_order="left")

    def result(self) -> RerunResult:
        empty = rate(
            pl.DataFrame(schema={"line": pl.Int64, "cdr_id": pl.String, **_CDR_SCHEMA, "framing": pl.String}),
            RatingState.empty(),
            self.catalog,
        )
        return RerunResult(
            rated=pl.concat(self._rated, how="diagonal_relaxed") if self._rated else empty.rated,
            rejected=pl.concat(self._rejected, how="diagonal_relaxed") if self._rejected else empty.rejected,
            caps=pl.concat(self._caps)
            if self._caps
            else pl.DataFrame(schema={"account_id": pl.String, "cdr_id": pl.String, "local_day": pl.Date}),
        )


_CDR_SCHEMA: Final = {
    name: pl.String
    for name in (
        "switch_id", "caller", "called", "answer_number", "caller_area", "answer_area",
        "start_time", "answer_time", "end_time", "billsec", "disposition",
    )
}




@dataclass(frozen=True)
class Diff:
    """What a correction changes (all money in units; one row per fact, in log order).

    Attributes
    ----------
    calls
        Changed calls: ``account_id, cdr_id, local_day, class, called, in_period, old_amount,
        new_amount, delta, allowance_delta_s, charged_delta_s, changed`` (the names of the
        columns that differ, comma-separated), then ``old_<c>`` and ``new_<c>`` for each
        of :data:`COMPARED_COLUMNS` (``old_status`` is the rejection reason of a call billed
        as rejected).
    new_rows
        Their new rated rows, in the same order, with the balance of the corrected
        history and the origin columns of the call.
    billed_rows
        The first-rating versions they replace (for the history; those replaced before
        are in it already).
    days
        ``account_id, local_day, cap_alerted``: each day of a changed call, and whether
        its daily cap is reached once corrected.
    alerts
        Alerts that appear, vanish or change balance (rating.corrected_history).
    totals
        ``account_id, class, calls, old_amount, new_amount, delta`` of the changed calls.
    balances
        ``account_id, balance, corrected_balance, delta``: the balance now, and once corrected.
    problems
        Why the correction cannot be applied (calls it would have to take back), if any.
    """

    calls: pl.DataFrame
    new_rows: pl.DataFrame
    billed_rows: pl.DataFrame
    days: pl.DataFrame
    alerts: pl.DataFrame
    totals: pl.DataFrame
    balances: pl.DataFrame
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.calls.height == 0 and self.alerts.height == 0


def _one_row_per_call(rated: pl.DataFrame) -> pl.DataFrame:
    """The rated rows without the unbilled leg of a call whose id also has a billed row."""
    if rated.height == 0:
        return rated
    shared = pl.struct("account_id", "cdr_id").is_duplicated()
    return rated.filter(~(shared & (pl.col("status") == "unbilled")))


def diff(rerun: RerunResult, billed: Billed, period: Period, catalog: Catalog) -> Diff:
    """Compare the rerun with what was billed (see the module docstring).

    ``catalog`` gives the low-balance thresholds of the alerts.
    """
    # One row per call: the unbilled leg of a call that has a billed one (docs/rules.md,
    # "Several records of one call") carries no money and is never corrected.
    billed = dataclasses.replace(billed, rated=_one_row_per_call(billed.rated))
    rerun = dataclasses.replace(rerun, rated=_one_row_per_call(rerun.rated))
    months = period.month_keys()
    accounts = rerun.rated.get_column("account_id").unique().to_list() + billed.rated.get_column(
        "account_id"
    ).unique().to_list()
    old = billed.rated.filter(_MONTH_KEY.is_in(months))
    new = rerun.rated.cast({c: old.schema[c] for c in COMPARED_COLUMNS if c in old.schema})
    keys = ["account_id", "cdr_id"]
    problems: list[str] = []

    # Billed calls the corrected run no longer rates: a correction cannot take them back.
    lost = old.join(new, on=keys, how="anti")
    if lost.height:
        reasons = lost.join(rerun.rejected.select("account_id", "cdr_id", "reason", "detail"), on=keys, how="left")
        for account_id, cdr_id, reason, detail in reasons.select(*keys, "reason", "detail").head(20).iter_rows():
            why = f"rejected {reason} ({detail})" if reason else "not in the log read"
            problems.append(f"call {cdr_id} of account {account_id} was billed, but the corrected run has it {why}")
        if lost.height > 20:
            problems.append(f"... and {lost.height - 20} more billed calls the corrected run does not rate")

    paired = new.join(old, on=keys, how="left", suffix="_old", maintain_order="left")
    was_billed = pl.col("status_old").is_not_null()
    differs = pl.lit(False)
    names = []
    for column in COMPARED_COLUMNS:
        different = ~pl.col(column).eq_missing(pl.col(f"{column}_old"))
        differs = differs | different
        names.append(pl.when(different).then(pl.lit(column)))
    # Calls rated now that were billed as rejections (late in the period, no_rate, ...).
    rejections = billed.rejected.select("account_id", *LINE_KEY, pl.col("reason").alias("billed_reason"))
    paired = paired.join(rejections, on=["account_id", *LINE_KEY], how="left", maintain_order="left")
    unlanded = paired.filter(~was_billed & pl.col("billed_reason").is_null())
    for account_id, cdr_id in unlanded.select(keys).head(20).iter_rows():
        problems.append(f"call {cdr_id} of account {account_id} has no billed row or rejection: it has not landed yet")
    changed = paired.filter(~was_billed | differs).with_columns(
        changed=pl.when(was_billed).then(pl.concat_str(names, separator=",", ignore_nulls=True)).otherwise(
            pl.lit("rated now (billed ") + pl.col("billed_reason").fill_null("?") + pl.lit(")")
        ),
        old_amount=pl.col("amount_old").fill_null(0),
        in_period=period.holds(pl.col("local_day")),
    )
    rated_now = pl.col("status") == "rated"
    billed_rated = pl.col("status_old") == "rated"
    changed = changed.with_columns(
        delta=pl.col("amount") - pl.col("old_amount"),
        allowance_delta_s=pl.when(rated_now).then(pl.col("allowance_s")).otherwise(0)
        - pl.when(billed_rated).then(pl.col("allowance_s_old")).otherwise(0),
        charged_delta_s=pl.when(rated_now).then(pl.col("charged_s")).otherwise(0)
        - pl.when(billed_rated).then(pl.col("charged_s_old")).otherwise(0),
    )

    trajectory = Trajectory.of(billed, changed, catalog)
    balances_after = corrected_balances(trajectory)
    # A correction moves the balance, never the package credit: a corrected call keeps the
    # credit it drew on and left as billed (docs/rules.md "Corrections").
    billed_used = pl.col("credit_used_old") if "credit_used_old" in changed.columns else pl.lit(None, dtype=pl.Int64)
    new_rows = (
        changed.join(balances_after, on=keys, how="left", maintain_order="left")
        .with_columns(
            balance=pl.col("corrected_balance"),
            credit=pl.col("corrected_credit"),
            credit_used=billed_used.fill_null(0),
        )
        .select(*[c for c in rerun.rated.columns])
    )
    billed_rows = old.join(changed.select(keys), on=keys, how="semi").filter(pl.col("correction_id") == "")
    calls = changed.select(
        *keys,
        "local_day",
        "class",
        "called",
        "in_period",
        "old_amount",
        pl.col("amount").alias("new_amount"),
        "delta",
        "allowance_delta_s",
        "charged_delta_s",
        "changed",
        *[
            pl.col(f"{c}_old").alias(f"old_{c}") if c != "status" else pl.coalesce("status_old", "billed_reason").alias("old_status")
            for c in COMPARED_COLUMNS
            if c != "amount"
        ],
        *[pl.col(c).alias(f"new_{c}") for c in COMPARED_COLUMNS if c != "amount"],
    )
    caps = rerun.caps.select("account_id", "local_day").unique().with_columns(cap_alerted=pl.lit(True))
    days = (
        calls.select("account_id", "local_day")
        .unique(maintain_order=True)
        .join(caps, on=["account_id", "local_day"], how="left", maintain_order="left")
        .with_columns(pl.col("cap_alerted").fill_null(False))
    )
    in_months = rerun.caps.select("account_id", "cdr_id")
    alerts = alert_changes(trajectory, billed.cap_alerts, in_months, months)
    totals = (
        calls.group_by("account_id", "class", maintain_order=True)
        .agg(calls=pl.len(), old_amount=pl.col("old_amount").sum(), new_amount=pl.col("new_amount").sum())
        .with_columns(delta=pl.col("new_amount") - pl.col("old_amount"))
        .sort("account_id", "class")
    )
    balances = trajectory.balances().filter(pl.col("account_id").is_in(list(set(accounts))))
    return Diff(
        calls=calls,
        new_rows=new_rows,
        billed_rows=billed_rows,
        days=days,
        alerts=alerts,
        totals=totals,
        balances=balances,
        problems=problems,
    )
