"""Balances and alerts of an account's history as a correction rewrites it (issue 15).

The balance an account had after each call and each ledger event, in log order, is a
running sum. A correction changes some calls' amounts; the **corrected history** is that
running sum with the corrected amounts charged at the calls' own places in the log (not
at the correction's): what the account would have had, had the calls been rated right
from the start. It starts from the balance before the window read, with every call at
its current amount and the money of ``CallRerated`` events left out (it is in those
amounts already), so that it ends, before the correction, at the account's balance now.

Alerts (spec 5, docs/rules.md "Ledger", "Corrections") are re-evaluated on it, before and
after the correction:

- ``low_balance`` / ``arrears``: a rated call, or a charge (not a refund), that takes the
  balance from ``>=`` the threshold (0) to below it;
- ``daily_cap_reached``: for the calls of the corrected months, as the rerun raised it;
  elsewhere as billed.

An alert that holds after but not before **appears**, one that held before but no longer
**vanishes** (it is cancelled), one that holds in both with another balance **moves**.
The balance of each corrected call's new row is its balance in the corrected history.

Package credit (issue 23): the sums run over **funds**, balance + credit, the figure
alerts judge; an event adds ``opening_balance + amount + credit_change`` to them, a call
takes its amount. A correction moves the balance, never the credit (docs/rules.md), so
each item's credit is the credit it was billed with (``credit`` of the call's row or of
the event; a call rated now that was billed as a rejection has the credit of the item
before it), and a balance is the funds less that credit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import polars as pl

from rating.clock import month_key
from schemas.columns import ALERT_KINDS

if TYPE_CHECKING:
    from rating.catalog import Catalog

#: A threshold for an account the catalogue does not know (tariffs.Account's default).
DEFAULT_LOW_BALANCE: Final[int] = 500_000
_ORIGIN = ("source", "ingest_id", "topic", "partition", "offset")
_MONTH_KEY = month_key(pl.col("local_day"))
_ITEM_SCHEMA: Final = {
    "account_id": pl.String,
    "id": pl.String,
    "item": pl.String,  # call | event
    "offset": pl.Int64,
    "seq": pl.Int64,
    "local_day": pl.Date,
    "line": pl.Int64,
    "source": pl.String,
    "ingest_id": pl.String,
    "topic": pl.String,
    "partition": pl.Int32,
    "effect_cur": pl.Int64,
    "effect_new": pl.Int64,
    "own_cur": pl.Int64,
    "own_new": pl.Int64,
    "alert_cur": pl.Boolean,
    "alert_new": pl.Boolean,
    "credit": pl.Int64,
}


@dataclass(frozen=True)
class Billed:
    """What was billed, as ClickHouse holds it now, in the window of the log read.

    Attributes
    ----------
    rated
        The current version of every call (rated or unbilled) of the accounts in the
        window, every month: the columns of ``RatingResult.rated`` plus ``source``,
        ``ingest_id``, ``topic``, ``partition``, ``offset``, ``version``, ``correction_id``.
    rejected
        The accounts' rejected lines: ``account_id, cdr_id, reason`` and :data:`rating.rerate.LINE_KEY`.
    events
        Their ledger events with money in the window but ``CallRerated`` (whose money is
        in the calls' current amounts): ``account_id, event_id, kind, amount,
        opening_balance, local_day, offset, seq`` (``seq``: order within the message),
        and ``credit_change``, ``credit`` (package credit, issue 23; 0 when absent).
    cap_alerts
        ``account_id, cdr_id`` of the ``daily_cap_reached`` alerts in force in the window.
    opening
        ``account_id, balance``: the funds (balance + package credit) before the window,
        calls counted at their current amounts (rating.corrected_history).
    """

    rated: pl.DataFrame
    rejected: pl.DataFrame
    events: pl.DataFrame
    cap_alerts: pl.DataFrame
    opening: pl.DataFrame


@dataclass(frozen=True)
class Trajectory:
    """Every money fact of the window, in log order, with the balance after it before
    (``balance_cur``) and after (``balance_new``) the correction."""

    items: pl.DataFrame

    @classmethod
    def of(cls, billed: Billed, changed: pl.DataFrame, catalog: Catalog) -> Trajectory:
        """The window's calls and ledger events, with ``changed`` (rating.rerate's changed
        calls: ``account_id, cdr_id, status, amount`` and the call's origin columns)."""
        keys = ["account_id", "cdr_id"]
        update = changed.select(*keys, pl.col("status").alias("status_new"), pl.col("amount").alias("amount_new"))
        calls = billed.rated.join(update, on=keys, how="left", maintain_order="left")
        # A call's place in the history, billed or rated now (the same columns for both).
        call = (
            "account_id",
            pl.col("cdr_id").alias("id"),
            pl.lit("call").alias("item"),
            "offset",
            pl.col("line").alias("seq"),
            "local_day",
            "line",
            *_ORIGIN[:4],
        )
        billed_calls = calls.select(
            *call,
            (-pl.col("amount")).alias("effect_cur"),
            (-pl.coalesce("amount_new", "amount")).alias("effect_new"),
            (-pl.col("amount")).alias("own_cur"),
            (-pl.coalesce("amount_new", "amount")).alias("own_new"),
            (pl.col("status") == "rated").alias("alert_cur"),
            (pl.coalesce("status_new", "status") == "rated").alias("alert_new"),
            _credit_of(calls),
        )
        # Calls billed as rejections that the correction rates (a late call of the period...).
        new_calls = changed.join(billed.rated.select(keys), on=keys, how="anti").select(
            *call,
            pl.lit(0).alias("effect_cur"),
            (-pl.col("amount")).alias("effect_new"),
            pl.lit(0).alias("own_cur"),
            (-pl.col("amount")).alias("own_new"),
            pl.lit(False).alias("alert_cur"),
            (pl.col("status") == "rated").alias("alert_new"),
            pl.lit(None, dtype=pl.Int64).alias("credit"),  # the credit of the item before it
        )
        money = _with_credit_columns(billed.events)
        # A charge lowers the funds; an ending of package credit raises no alert (docs/rules.md).
        funds = pl.col("amount") + pl.col("credit_change")
        charge = (funds < 0) & ~pl.col("kind").is_in(["RefundIssued", "PackageCreditExpired"])
        events = money.select(
            "account_id",
            pl.col("event_id").alias("id"),
            pl.lit("event").alias("item"),
            "offset",
            "seq",
            "local_day",
            pl.lit(0).alias("line"),
            pl.lit("").alias("source"),
            pl.lit("").alias("ingest_id"),
            pl.lit("").alias("topic"),
            pl.lit(-1).alias("partition"),
            # An opening sets the balance it was opened with: in the sum, not in the alert's "before".
            (funds + pl.col("opening_balance")).alias("effect_cur"),
            (funds + pl.col("opening_balance")).alias("effect_new"),
            funds.alias("own_cur"),
            funds.alias("own_new"),
            charge.alias("alert_cur"),
            charge.alias("alert_new"),
            "credit",
        )
        items = (
            pl.concat([frame.cast(_ITEM_SCHEMA) for frame in (billed_calls, new_calls, events)], how="vertical")
            .sort("account_id", "offset", "seq", maintain_order=True)
            .with_columns(pl.col("credit").forward_fill().over("account_id").fill_null(0))
        )
        thresholds = catalog.accounts.select("account_id", "low_balance_threshold")
        opening = billed.opening.select("account_id", pl.col("balance").alias("opening"))
        items = (
            items.join(opening, on="account_id", how="left", maintain_order="left")
            .join(thresholds, on="account_id", how="left", maintain_order="left")
            .with_columns(
                pl.col("opening").fill_null(0),
                pl.col("low_balance_threshold").fill_null(DEFAULT_LOW_BALANCE),
            )
            .with_columns(
                balance_cur=pl.col("opening") + pl.col("effect_cur").cum_sum().over("account_id"),
                balance_new=pl.col("opening") + pl.col("effect_new").cum_sum().over("account_id"),
            )
        )
        idle = opening.join(items.select("account_id").unique(), on="account_id", how="anti")
        return cls(items=_with_idle(items, idle) if idle.height else items)

    def balances(self) -> pl.DataFrame:
        """``account_id, balance, corrected_balance, delta``: the end of the history before
        and after the correction (the balance: the funds less the credit)."""
        credit = pl.col("credit").last().fill_null(0)
        return (
            self.items.group_by("account_id", maintain_order=True)
            .agg(
                balance=pl.col("balance_cur").last().fill_null(pl.col("opening").first()) - credit,
                corrected_balance=pl.col("balance_new").last().fill_null(pl.col("opening").first()) - credit,
            )
            .with_columns(delta=pl.col("corrected_balance") - pl.col("balance"))
            .sort("account_id")
        )


def _with_idle(items: pl.DataFrame, accounts: pl.DataFrame) -> pl.DataFrame:
    """Accounts with nothing in the window: one empty row each, so their balance shows."""
    idle = accounts.select(
        "account_id",
        pl.lit(None, dtype=pl.Int64).alias("balance_cur"),
        pl.lit(None, dtype=pl.Int64).alias("balance_new"),
        "opening",
    )
    return pl.concat([items, idle], how="diagonal_relaxed")


def _credit_of(calls: pl.DataFrame) -> pl.Expr:
    """A billed call's package credit after it (0 for rows from before issue 23)."""
    return (pl.col("credit") if "credit" in calls.columns else pl.lit(0, dtype=pl.Int64)).alias("credit")


def _with_credit_columns(events: pl.DataFrame) -> pl.DataFrame:
    """``events`` with ``credit_change`` and ``credit`` (0 where they were not read)."""
    missing = [c for c in ("credit_change", "credit") if c not in events.columns]
    return events.with_columns(pl.lit(0, dtype=pl.Int64).alias(c) for c in missing) if missing else events


def corrected_balances(trajectory: Trajectory) -> pl.DataFrame:
    """``account_id, cdr_id, corrected_balance, corrected_credit``: each call's balance in
    the corrected history, and the package credit it keeps (as billed)."""
    return trajectory.items.filter(pl.col("item") == "call").select(
        "account_id", pl.col("id").alias("cdr_id"), (pl.col("balance_new") - pl.col("credit")).alias("corrected_balance"),
        pl.col("credit").alias("corrected_credit"),
    )


def alert_changes(
    trajectory: Trajectory, billed_caps: pl.DataFrame, rerun_caps: pl.DataFrame, months: list[int]
) -> pl.DataFrame:
    """The alerts that appear, vanish or move (module docstring).

    ``billed_caps``: ``account_id, cdr_id`` of the cap alerts in force; ``rerun_caps``: those
    of the rerun, for the calls of ``months`` (month keys).

    Returns ``account_id, kind, cdr_id, change (appear|vanish|move), old_balance,
    new_balance`` and the alert row to write: ``balance`` (the new one; the old one of a
    cancelled alert), ``cancelled``, ``line``, ``local_day`` and the origin columns.
    """
    items = trajectory.items.filter(pl.col("id").is_not_null())
    threshold = pl.col("low_balance_threshold")
    corrected_month = _MONTH_KEY.is_in(months) & (pl.col("item") == "call")
    billed_cap = pl.struct("account_id", "id").is_in(
        billed_caps.select("account_id", pl.col("cdr_id").alias("id")).to_struct().implode()
    )
    rerun_cap = pl.struct("account_id", "id").is_in(
        rerun_caps.select("account_id", pl.col("cdr_id").alias("id")).to_struct().implode()
    )
    flags = items.with_columns(
        before_cur=pl.col("balance_cur") - pl.col("own_cur"),
        before_new=pl.col("balance_new") - pl.col("own_new"),
    ).with_columns(
        cap_cur=billed_cap,
        cap_new=pl.when(corrected_month).then(rerun_cap).otherwise(billed_cap),
        low_cur=pl.col("alert_cur") & (pl.col("before_cur") >= threshold) & (pl.col("balance_cur") < threshold),
        low_new=pl.col("alert_new") & (pl.col("before_new") >= threshold) & (pl.col("balance_new") < threshold),
        arrears_cur=pl.col("alert_cur") & (pl.col("before_cur") >= 0) & (pl.col("balance_cur") < 0),
        arrears_new=pl.col("alert_new") & (pl.col("before_new") >= 0) & (pl.col("balance_new") < 0),
    ).with_row_index("order")
    described = ["order", "account_id", pl.col("id").alias("cdr_id"), "line", "local_day", *_ORIGIN]
    parts = []
    # The balance alerts only: a correction neither raises nor takes back an unusual-use
    # alert (issue 25, docs/rules.md "Unusual use").
    for rank, (kind, flag) in enumerate(zip(ALERT_KINDS[:3], ("cap", "low", "arrears"), strict=True)):
        parts.append(
            flags.filter(pl.col(f"{flag}_cur") | pl.col(f"{flag}_new")).select(
                *described,
                pl.lit(rank).alias("rank"),
                pl.lit(kind).alias("kind"),
                pl.when(pl.col(f"{flag}_cur")).then(pl.col("balance_cur") - pl.col("credit")).alias("old_balance"),
                pl.when(pl.col(f"{flag}_new")).then(pl.col("balance_new") - pl.col("credit")).alias("new_balance"),
            )
        )
    alerts = pl.concat(parts).sort("order", "rank")
    change = (
        pl.when(pl.col("old_balance").is_null())
        .then(pl.lit("appear"))
        .when(pl.col("new_balance").is_null())
        .then(pl.lit("vanish"))
        .when(pl.col("old_balance") != pl.col("new_balance"))
        .then(pl.lit("move"))
    )
    return (
        alerts.with_columns(change=change)
        .filter(pl.col("change").is_not_null())
        .select(
            "account_id",
            "kind",
            "cdr_id",
            "change",
            "old_balance",
            "new_balance",
            pl.coalesce("new_balance", "old_balance").alias("balance"),
            (pl.col("change") == "vanish").alias("cancelled"),
            "line",
            "local_day",
            *_ORIGIN,
        )
    )
