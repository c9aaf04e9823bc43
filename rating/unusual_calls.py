"""The ``unusual_calls`` alert (issue 25): a burst of calls worth a person's look.

Operators watch for toll fraud: bursts of international or late-night calls to a number.
The catalogue's rule (``tariffs.catalogue.UnusualCalls``) names which rated calls count
(their class, and the local hours of their charge time) and how many of them (``count``)
within ``window_minutes`` make a burst. In log order, per account, over its counted
calls: a call is *in a burst* when it and the ``count - 1`` counted calls before it span
less than the window (latest charge time minus earliest); the alert is raised at a call
in a burst whose counted call before was not (once per burst: it re-arms once a counted
call is not in one).

The state keeps each account's last ``count`` counted charge times (``RatingState.bursts``),
enough to judge the next batch's first calls and the one before them, so any split of the
log into batches gives the same alerts. docs/rules.md ("Unusual use").
"""

from __future__ import annotations

import polars as pl

from rating.state import BURSTS_SCHEMA  # noqa: F401 - the doctest's
from tariffs.catalogue import UnusualCalls

_ACCOUNT = "account_id"


def counted(rule: UnusualCalls) -> pl.Expr:
    """Which priced rows count: rated, of the rule's classes, inside its local hours
    (``day_second``: the charge time's second of the local day; ``[start, end)`` wraps
    past midnight when ``end <= start``, as off-peak windows do)."""
    mask = (pl.col("status") == "rated") & pl.col("class").is_in(list(rule.classes))
    if rule.counts_all_day():
        return mask
    start, end = rule.hours  # type: ignore[misc]
    second = pl.col("day_second")
    inside = (second >= start) & (second < end) if start < end else (second >= start) | (second < end)
    return mask & inside


def burst_alerts(priced: pl.DataFrame, bursts: pl.DataFrame, rule: UnusualCalls) -> tuple[pl.Series, pl.DataFrame]:
    """The ``row`` of each priced call that raises ``unusual_calls``, and the bursts table
    after the batch (``account_id, charge``: each account's last ``count`` counted calls,
    in log order).

    Examples
    --------
    >>> from datetime import datetime, timedelta, timezone
    >>> rule = UnusualCalls(count=3, window_minutes=60)
    >>> at = datetime(2026, 3, 2, 1, tzinfo=timezone.utc)
    >>> minutes = [0, 10, 20, 30, 200, 205, 210]
    >>> priced = pl.DataFrame({"row": range(7), "account_id": ["A"] * 7, "status": ["rated"] * 7,
    ...     "class": ["international"] * 7, "charge": [at + timedelta(minutes=m) for m in minutes]})
    >>> rows, after = burst_alerts(priced, pl.DataFrame(schema=BURSTS_SCHEMA), rule)
    >>> rows.to_list(), after.height
    ([2, 6], 3)
    >>> burst_alerts(priced.head(2), pl.DataFrame(schema=BURSTS_SCHEMA), rule)[1].height  # fewer than count: kept
    2
    """
    calls = priced.filter(counted(rule)).select(
        "row", _ACCOUNT, pl.col("charge").dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    )
    if calls.height == 0:
        return pl.Series("row", [], dtype=pl.UInt32), bursts
    history = bursts.join(calls.select(_ACCOUNT).unique(), on=_ACCOUNT, how="semi")
    log = pl.concat(
        [history.select(pl.lit(None, dtype=calls.schema["row"]).alias("row"), _ACCOUNT, "charge"), calls]
    )
    count, window = rule.count, pl.duration(minutes=rule.window_minutes)
    charge = pl.col("charge")
    span = charge.rolling_max(count).over(_ACCOUNT) - charge.rolling_min(count).over(_ACCOUNT)
    judged = log.with_columns(burst=(span < window).fill_null(False)).with_columns(
        before=pl.col("burst").shift(1).over(_ACCOUNT).fill_null(False)
    )
    fired = judged.filter(pl.col("burst") & ~pl.col("before") & pl.col("row").is_not_null()).get_column("row")
    # Each account's last ``count``: index + count >= length (``pl.len()`` is unsigned:
    # ``length - count`` would wrap round for an account with fewer calls and drop them all).
    after = pl.concat([bursts, calls.select(_ACCOUNT, "charge")]).filter(
        pl.int_range(pl.len()).over(_ACCOUNT) + count >= pl.len().over(_ACCOUNT)
    )
    return fired, after

