"""What a correction does to the rating state of its account (issue 15; docs/rules.md "Corrections").

Pure. A correction changes calls of months that may still be open: the account's later
calls of such a month must find the allowance used, the seconds charged per class and
each day's spend (and cap alert) that the corrected calls leave, or they would be placed
on the tiers, the package and the daily cap by the billed figures. The months still
within the account's horizon (rating.horizon: the state keeps no other) take the calls'
deltas; older months are left alone: no later call can reach them.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from rating.state import RatingState
from schemas.corrections import CallChange, DayChange


def corrected_state(
    state: RatingState, account_id: str, calls: Sequence[CallChange], days: Sequence[DayChange], horizon_months: int
) -> tuple[RatingState, list[int]]:
    """The state once ``calls`` are corrected, and the months it changed (month keys).

    Examples
    --------
    >>> from datetime import date
    >>> state = RatingState.empty()
    >>> state = RatingState(**{**{n: getattr(state, n) for n in ("balances", "allowance", "charged", "daily", "seen")},
    ...     "latest": pl.DataFrame({"account_id": ["A"], "latest_month": [24314]})})
    >>> call = CallChange(cdr_id="c", local_day=date(2026, 3, 2), call_class="local", old_amount=3000,
    ...                   new_amount=2000, charged_delta_s=60)
    >>> after, months = corrected_state(state, "A", [call], [DayChange(local_day=date(2026, 3, 2), cap_alerted=False)], 1)
    >>> months, after.charged.rows(), after.daily.rows()
    ([24314], [('A', 24314, 'local', 60)], [('A', datetime.date(2026, 3, 2), -1000, False)])
    """
    latest = state.latest.filter(pl.col("account_id") == account_id).get_column("latest_month")
    if latest.len() == 0:
        return state, []
    floor = int(latest[0]) - horizon_months
    kept = [call for call in calls if _month_key(call) >= floor]
    if not kept:
        return state, []
    changes = pl.DataFrame(
        {
            "month_key": [_month_key(call) for call in kept],
            "class": [call.call_class for call in kept],
            "local_day": [call.local_day for call in kept],
            "allowance": [call.allowance_delta_s for call in kept],
            "charged": [call.charged_delta_s for call in kept],
            "spent": [call.delta for call in kept],
        },
        schema={"month_key": pl.Int64, "class": pl.String, "local_day": pl.Date, "allowance": pl.Int64,
                "charged": pl.Int64, "spent": pl.Int64},
    ).with_columns(account_id=pl.lit(account_id))
    allowance = changes.group_by("account_id", "month_key").agg(allowance_used_s=pl.col("allowance").sum())
    charged = changes.group_by("account_id", "month_key", "class").agg(charged_before_s=pl.col("charged").sum())
    spent = changes.group_by("account_id", "local_day").agg(spent_before=pl.col("spent").sum())
    flags = {day.local_day: day.cap_alerted for day in days}
    daily = _added(state.daily, spent.with_columns(cap_alerted=pl.lit(False)), ["account_id", "local_day"])
    if flags:
        daily = daily.with_columns(
            cap_alerted=pl.when(pl.col("account_id") == account_id)
            .then(
                pl.col("local_day")
                .replace_strict(list(flags), list(flags.values()), default=None, return_dtype=pl.Boolean)
                .fill_null(pl.col("cap_alerted"))
            )
            .otherwise(pl.col("cap_alerted"))
        )
    return RatingState(
        balances=state.balances,
        allowance=_added(state.allowance, allowance, ["account_id", "month_key"]),
        charged=_added(state.charged, charged, ["account_id", "month_key", "class"]),
        daily=daily,
        seen=state.seen,
        latest=state.latest,
        credits=state.credits,
        bursts=state.bursts,
    ), sorted(set(changes.get_column("month_key").to_list()))


def _month_key(call: CallChange) -> int:
    return call.local_day.year * 12 + call.local_day.month - 1


def _added(before: pl.DataFrame, delta: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """``before`` with ``delta``'s values added per key (rows new to it appended)."""
    delta = delta.select(before.columns).cast(before.schema)
    values = [c for c in before.columns if c not in keys]
    aggregations = [pl.col(c).any() if before.schema[c] == pl.Boolean else pl.col(c).sum() for c in values]
    return pl.concat([before, delta]).group_by(keys, maintain_order=True).agg(aggregations)

