"""``rate(batch, state, catalog) -> RatingResult``: spec/rating.md sections 3-5 over a batch.

One pure function for every rating path (offline ``rate``, the streaming agent, a
rerating run). Rows are CDRs in log order; the sequential rules of the spec (allowance,
tiers, caps, balances, duplicates, alerts) become running totals per account, seeded
from the state of the batches before, so any split of a log into batches gives exactly
the result of rating it whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from rating.allowance import allowance_s
from rating.clock import calendar_keys, local_time, offpeak
from rating.caps import cap_reached, capped_amount
from rating.catalog import Catalog
from rating.fields import malformed_detail, typed_fields
from rating.state import RatingState
from rating.tiers import round_half_up, tier_columns
from schemas.columns import ALERT_KINDS, CDR_COLUMNS

_BATCH_COLUMNS = ("line", *CDR_COLUMNS, "framing")


@dataclass(frozen=True)
class RatingResult:
    """What one batch produced.

    Attributes
    ----------
    rated
        One row per CDR not rejected (status ``rated`` or ``unbilled``), in log order,
        money in Int64 units, with the facts that explain the price.
    rejected
        ``line, cdr_id, reason, detail, account_id`` in log order.
    alerts
        ``account_id, kind, cdr_id, balance, line, local_day`` in log order.
    state
        The state after this batch: pass it to the next call.
    """

    rated: pl.DataFrame
    rejected: pl.DataFrame
    alerts: pl.DataFrame
    state: RatingState


def rate(batch: pl.DataFrame, state: RatingState, catalog: Catalog) -> RatingResult:
    """Rate a batch of raw CDRs in log order.

    Parameters
    ----------
    batch
        ``line``, the 12 CDR columns as strings and ``framing`` (see
        ``schemas.cdr_csv.parse_chunk``); further columns (``source`` ...) are carried
        through to the outputs.
    state
        The state after the previous batch (``RatingState.empty()`` before the first).
    catalog
        ``Catalog.from_tariffs(tariffs)``.

    Examples
    --------
    >>> from schemas.cdr_csv import parse_csv
    >>> from tariffs import load_tariffs
    >>> vectors = "../shared/vectors/basic/"
    >>> catalog = Catalog.from_tariffs(load_tariffs(vectors + "plans", vectors + "accounts.toml"))
    >>> batch = parse_csv(open(vectors + "cdrs.csv", "rb").read())
    >>> result = rate(batch, RatingState.empty(), catalog)
    >>> result.rated.filter(pl.col("cdr_id") == "H00002").select("allowance_s", "amount").row(0)
    (60, 3000)
    """
    extra = [c for c in batch.columns if c not in _BATCH_COLUMNS]
    frame = _judge(batch.with_row_index("row"), state, catalog)
    rejected = frame.filter(pl.col("reason").is_not_null())
    accepted = frame.filter(pl.col("reason").is_null())
    priced = _price(accepted, state, catalog)
    alerts = _alerts(priced, extra)
    return RatingResult(
        rated=priced.select(
            "cdr_id",
            "account_id",
            "status",
            "class",
            "offpeak",
            "billable_s",
            "allowance_s",
            "charged_s",
            "base",
            "discount",
            "minimum_uplift",
            "cap_waived",
            "amount",
            "balance",
            "line",
            "called",
            pl.col("charge").alias("charge_time"),
            "local_day",
            "plan_id",
            "plan_version",
            "rate_segment",
            "tier_first",
            "tier_last",
            "offpeak_percent",
            "daily_cap",
            *extra,
        ),
        rejected=rejected.select(
            "line", pl.col("cdr_id").fill_null(""), "reason", "detail", "account_id", *extra
        ),
        alerts=alerts,
        state=_next_state(state, frame, priced),
    )


def _judge(frame: pl.DataFrame, state: RatingState, catalog: Catalog) -> pl.DataFrame:
    """Spec 4 steps 1-7: the first rejection wins; ``reason`` stays null for the rest."""
    frame = (
        frame.with_columns(typed_fields())
        .with_columns(malformed=malformed_detail())
        .join(catalog.numbers, on="called", how="left")
    )
    # Step 3: duplicates are judged within one account's log, among CDRs that passed 1-2.
    passed = pl.col("malformed").is_null() & pl.col("account_id").is_not_null()
    seen_before = state.seen.with_columns(seen_before=pl.lit(True))
    frame = frame.join(seen_before, on=["account_id", "cdr_id"], how="left").with_columns(
        passed_identity=passed,
        duplicate=passed
        & (
            pl.col("seen_before").fill_null(False)
            | ~pl.struct("account_id", "cdr_id", passed.alias("p")).is_first_distinct()
        ),
    )
    answered_at = pl.col("answer")
    invalid_time = (
        pl.when(pl.col("end") < pl.col("start"))
        .then(pl.lit("end_time is before start_time"))
        .when(answered_at.is_not_null() & ((answered_at < pl.col("start")) | (answered_at > pl.col("end"))))
        .then(pl.lit("answer_time is outside [start_time, end_time]"))
        .when((pl.col("disposition") == "ANSWERED") & answered_at.is_null())
        .then(pl.lit("disposition ANSWERED without answer_time"))
    )
    frame = frame.join(catalog.accounts, on="account_id", how="left").with_columns(
        invalid_time=invalid_time,
        charge=pl.coalesce("answer", "start"),  # spec 4 step 5
        **{"class": _call_class()},
        unbilled=(pl.col("disposition") != "ANSWERED") | (pl.col("billsec_n") == 0),
    )
    frame = frame.with_columns(local_time(catalog.timezones)).with_columns(
        calendar_keys(), version_no=_version_in_force(catalog)
    )
    frame = _with_rate(frame, catalog)
    no_rate = (
        pl.when(pl.col("version_no").is_null())
        .then(pl.format("no version of plan {} is in force at {}", pl.col("plan_id"), pl.col("charge")))
        .when(pl.col("rate_id").is_null())
        .then(
            pl.format(
                "plan {} (version {}) has no {} rate for {}",
                pl.col("plan_id"),
                pl.col("plan_version"),
                pl.col("class"),
                pl.col("called"),
            )
        )
    )
    reason = (
        pl.when(pl.col("malformed").is_not_null())
        .then(pl.lit("malformed"))
        .when(pl.col("account_id").is_null())
        .then(pl.lit("unknown_number"))
        .when(pl.col("duplicate"))
        .then(pl.lit("duplicate"))
        .when(pl.col("invalid_time").is_not_null())
        .then(pl.lit("invalid_time"))
        .when(~pl.col("unbilled") & no_rate.is_not_null())
        .then(pl.lit("no_rate"))
    )
    detail = (
        pl.when(pl.col("malformed").is_not_null())
        .then(pl.col("malformed"))
        .when(pl.col("account_id").is_null())
        .then(pl.format("called number {} belongs to no account", pl.col("called").fill_null("")))
        .when(pl.col("duplicate"))
        .then(pl.format("cdr_id {} was already seen for account {}", pl.col("cdr_id"), pl.col("account_id")))
        .when(pl.col("invalid_time").is_not_null())
        .then(pl.col("invalid_time"))
        .otherwise(no_rate)
    )
    return frame.with_columns(reason=reason, detail=detail)


def _call_class() -> pl.Expr:
    # spec 4 step 5: + or 00 marks an international caller.
    area = pl.col("caller_area").fill_null("")
    return (
        pl.when(area.str.starts_with("+") | area.str.starts_with("00"))
        .then(pl.lit("international"))
        .when(area == pl.col("answer_area").fill_null(""))
        .then(pl.lit("local"))
        .otherwise(pl.lit("long_distance"))
    )


def _version_in_force(catalog: Catalog) -> pl.Expr:
    """The version with the latest ``effective_from <= charge`` (spec 2.1), else null."""
    expr: pl.Expr = pl.lit(None, dtype=pl.Int32)
    for plan_id, effective_from, version_no in catalog.versions.select(
        "plan_id", "effective_from", "version_no"
    ).iter_rows():
        # Versions are sorted by effective_from, so later ones win.
        in_force = (pl.col("plan_id") == plan_id) & (pl.col("charge") >= pl.lit(effective_from))
        expr = pl.when(in_force).then(pl.lit(version_no, dtype=pl.Int32)).otherwise(expr)
    return expr


def _with_rate(frame: pl.DataFrame, catalog: Catalog) -> pl.DataFrame:
    """Join the version's facts and the longest matching rate segment (spec 2.1)."""
    frame = frame.join(
        catalog.versions.drop("effective_from"), on=["plan_id", "version_no"], how="left"
    )
    keys = catalog.rates.with_row_index("rate_id").select(
        "rate_id", "plan_id", "version_no", "class", "rate_segment", "segment_length"
    )
    candidates = []
    for length in catalog.segment_lengths:  # longest first
        prefix = pl.lit("*") if length == 0 else pl.col("called").str.slice(0, length)
        matched = frame.select("row", "plan_id", "version_no", "class", prefix.alias("rate_segment")).join(
            keys.filter(pl.col("segment_length") == length).drop("segment_length"),
            on=["plan_id", "version_no", "class", "rate_segment"],
            how="inner",
        )
        candidates.append(matched.select("row", pl.col("rate_id").alias(f"rate_id_{length}")))
    rate_ids = [f"rate_id_{length}" for length in catalog.segment_lengths]
    for matched in candidates:
        frame = frame.join(matched, on="row", how="left")
    frame = frame.with_columns(
        rate_id=pl.coalesce(rate_ids) if rate_ids else pl.lit(None, dtype=pl.UInt32)
    ).drop(rate_ids)
    tiers = catalog.rates.with_row_index("rate_id").drop("plan_id", "version_no", "class", "segment_length", "tier_count")
    return frame.join(tiers, on="rate_id", how="left")


def _price(frame: pl.DataFrame, state: RatingState, catalog: Catalog) -> pl.DataFrame:
    """Spec 4 step 8 and spec 5 for the accepted rows (rated and unbilled), in log order."""
    rated = ~pl.col("unbilled")
    first, step = pl.col("increment_first"), pl.col("increment_next")
    billsec = pl.col("billsec_n")
    billable = pl.when(billsec <= first).then(first).otherwise(first + (billsec - first + step - 1) // step * step)
    frame = frame.with_columns(
        status=pl.when(rated).then(pl.lit("rated")).otherwise(pl.lit("unbilled")),
        billable_s=pl.when(rated).then(billable).otherwise(0),
        uses_allowance=rated & (pl.col("class") != "international"),
    )
    frame = (
        frame.join(catalog.month_versions(frame), on=["plan_id", "month_key"], how="left")
        .join(catalog.day_caps(frame), on=["plan_id", "local_day"], how="left")
        .join(state.allowance, on=["account_id", "month_key"], how="left")
        .join(state.charged, on=["account_id", "month_key", "class"], how="left")
        .join(state.daily, on=["account_id", "local_day"], how="left")
        .join(state.balances, on="account_id", how="left")
        .with_columns(
            pl.col("allowance_used_s").fill_null(0),
            pl.col("charged_before_s").fill_null(0),
            pl.col("spent_before").fill_null(0),
            pl.col("cap_alerted").fill_null(False),
            balance_before_batch=pl.coalesce("balance", "opening_balance"),
        )
        .drop("balance")
    )
    frame = frame.with_columns(allowance_s()).with_columns(charged_s=pl.col("billable_s") - pl.col("allowance_s"))
    frame = frame.with_columns(tier_columns(catalog.tier_count)).with_columns(
        base=pl.when(rated).then(round_half_up(pl.col("raw"), 60)).otherwise(0),
        offpeak=(rated & offpeak(catalog)).fill_null(False),
    )
    pcm = pl.col("per_call_minimum")
    frame = (
        frame.with_columns(
            discount=pl.when(pl.col("offpeak"))
            .then(round_half_up(pl.col("base") * pl.col("offpeak_percent"), 100))
            .otherwise(0),
        )
        .with_columns(
            minimum_uplift=pl.when((pl.col("charged_s") > 0) & pcm.is_not_null())
            .then(pl.max_horizontal(pcm - (pl.col("base") - pl.col("discount")), pl.lit(0)))
            .otherwise(0),
            daily_cap=pl.coalesce("account_daily_cap", "plan_daily_cap"),
        )
        .with_columns(pre=pl.col("base") - pl.col("discount") + pl.col("minimum_uplift"))
        .with_columns(capped_amount())
        .with_columns(cap_waived=pl.col("pre") - pl.col("amount"), cap_reached=cap_reached())
    )
    balance = pl.col("balance_before_batch") - pl.col("amount").cum_sum().over("account_id")
    frame = frame.with_columns(balance=balance).with_columns(balance_before=pl.col("balance") + pl.col("amount"))
    threshold = pl.col("low_balance_threshold")
    return frame.with_columns(
        low_balance=rated & (pl.col("balance_before") >= threshold) & (pl.col("balance") < threshold),
        arrears=rated & (pl.col("balance_before") >= 0) & (pl.col("balance") < 0),
        offpeak_percent=pl.when(pl.col("offpeak")).then(pl.col("offpeak_percent")).otherwise(0),
        # The explanation columns only mean something for a rated call.
        **{
            name: pl.when(rated).then(pl.col(name))
            for name in ("plan_version", "rate_segment", "tier_first", "tier_last", "daily_cap")
        },
    )


def _alerts(priced: pl.DataFrame, extra: list[str]) -> pl.DataFrame:
    """Spec 5: alerts in log order; one call's alerts in the order of ``ALERT_KINDS``."""
    flags = {"daily_cap_reached": "cap_reached", "low_balance": "low_balance", "arrears": "arrears"}
    parts = [
        priced.filter(pl.col(flags[kind])).select(
            "row",
            pl.lit(order).alias("kind_order"),
            "account_id",
            pl.lit(kind).alias("kind"),
            "cdr_id",
            "balance",
            "line",
            "local_day",
            *extra,
        )
        for order, kind in enumerate(ALERT_KINDS)
    ]
    return pl.concat(parts).sort("row", "kind_order").drop("row", "kind_order")


def _next_state(state: RatingState, judged: pl.DataFrame, priced: pl.DataFrame) -> RatingState:
    """Fold the batch into the state: totals add up, the last balance wins."""
    rated = priced.filter(pl.col("status") == "rated")
    balances = priced.group_by("account_id").agg(pl.col("balance").last())
    allowance = rated.filter(pl.col("allowance_s") > 0).group_by("account_id", "month_key").agg(
        allowance_used_s=pl.col("allowance_s").sum()
    )
    charged = rated.filter(pl.col("charged_s") > 0).group_by("account_id", "month_key", "class").agg(
        charged_before_s=pl.col("charged_s").sum()
    )
    daily = rated.group_by("account_id", "local_day").agg(
        spent_before=pl.col("amount").sum(), cap_alerted=pl.col("cap_reached").any()
    )
    remembered = judged.filter(pl.col("passed_identity") & ~pl.col("duplicate")).select("account_id", "cdr_id")
    return RatingState(
        balances=pl.concat([state.balances.join(balances, on="account_id", how="anti"), balances]),
        allowance=_add(state.allowance, allowance, ["account_id", "month_key"]),
        charged=_add(state.charged, charged, ["account_id", "month_key", "class"]),
        daily=pl.concat([state.daily, daily])
        .group_by("account_id", "local_day", maintain_order=True)
        .agg(pl.col("spent_before").sum(), pl.col("cap_alerted").any()),
        seen=pl.concat([state.seen, remembered]),
    )


def _add(before: pl.DataFrame, delta: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    value = next(c for c in before.columns if c not in keys)
    return (
        pl.concat([before, delta.select(before.columns)])
        .group_by(keys, maintain_order=True)
        .agg(pl.col(value).sum())
    )
