"""``rate(batch, state, catalog) -> RatingResult``: spec/rating.md sections 3-5 over a batch.

One pure function for every rating path (offline ``rate``, the streaming agent, a
rerating run). Rows are CDRs in log order; the sequential rules of the spec (allowance,
tiers, caps, balances, duplicates, alerts) become running totals per account, seeded
from the state of the batches before, so any split of a log into batches gives exactly
the result of rating it whole. What needs no state (typed fields, account, class, local
time, plan version, rate) is :func:`prepare`, which a caller may run ahead of ``rate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from rating.allowance import allowance_s
from rating.caps import cap_reached, capped_amount, day_running_totals, spent_after
from rating.catalog import ANY_CLASS_CODE, CLASS_CODES, Catalog, rate_key
from rating.clock import calendar_keys, local_time, month_key, offpeak
from rating.credit import with_credit, without_credit
from rating.fields import malformed_detail, malformed_flag, with_typed_fields
from rating.horizon import Judged, floors, judge_horizon, keep_mask, memory_id
from rating.ownership import owner_at
from rating.unusual_calls import burst_alerts
from rating.state import RatingState
from rating.tiers import round_half_up, tier_columns, tier_seconds, with_tier_start
from schemas.cdr_csv import records_only
from schemas.columns import ALERT_KINDS, CDR_COLUMNS
from tariffs import PlanVersion

#: A batch column naming the account a line was routed to (the worker: its message's key).
#: When given, the line is that account's: routing decided it when the line entered the
#: log, so a replay with a later catalogue rates it the same (docs/rules.md, "Number transfer").
ROUTED_ACCOUNT = "routed_account"
_BATCH_COLUMNS = ("line", *CDR_COLUMNS, "framing", ROUTED_ACCOUNT)
#: Columns a batch may carry besides those: how a switch format placed the caller
#: (``schemas.numbering.CALLER_ORIGINS``; worked out from ``caller_area`` when absent) and
#: when the feed read the line (rating.bounds; no bound when absent).
_OPTIONAL_COLUMNS: dict[str, pl.DataType] = {"caller_origin": pl.String(), "read_at": pl.Datetime("us", "UTC")}
# Composite integer keys: a window or lookup over one Int64 column is far cheaper than
# over several string columns. Month keys and day numbers stay below 2**20.
_SHIFT = 1 << 20
_DAY_NUMBER = pl.col("local_day").cast(pl.Int32).cast(pl.Int64)
# The lazy plans here are a few column steps over a batch already in memory: polars'
# in-memory engine runs them on ~5% less CPU than the streaming one (its default since 2.0).
_ENGINE = "in-memory"


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
    remembered
        ``account_id, cdr_id, month_key``: the ids this batch added to the duplicate
        check's memory (``state.seen``), for a caller that stores the state by parts.
    expiries
        Package credit that ended at a call of the batch (rating.credit): ``account_id,
        cdr_id, line, credit_expired`` (the credit left), ``credit_refund`` (it went to the
        balance), ``credit_expires`` (the end), ``balance`` (right after the ending, before
        the call), with the batch's further columns: the ledger records each as a
        ``PackageCreditExpired`` event.
    """

    rated: pl.DataFrame
    rejected: pl.DataFrame
    alerts: pl.DataFrame
    state: RatingState
    remembered: pl.DataFrame
    expiries: pl.DataFrame | None = None


@dataclass(frozen=True)
class PreparedBatch:
    """A batch with what rating works out before it needs the state (see :func:`prepare`).

    Attributes
    ----------
    frame
        The raw batch with its typed fields, account, call class, local calendar, plan
        version and rate: every fact of spec 4 steps 1-7 except the duplicate check.
    extra
        The batch's own further columns (``source`` ...), carried through to the outputs.
    catalog
        The catalogue it was prepared with; :func:`rate` takes it with that one only.
    """

    frame: pl.DataFrame
    extra: list[str]
    catalog: Catalog


def prepare(batch: pl.DataFrame, catalog: Catalog) -> PreparedBatch:
    """The part of rating a batch that needs no state: nearly half of its work.

    Rating a batch is ``rate(prepare(batch, catalog), state, catalog)``; a caller that
    holds the next batch while the state of the one before is not known yet (the offline
    path, reading one chunk ahead) may prepare it meanwhile, in another thread.

    Examples
    --------
    >>> from schemas.cdr_csv import parse_csv
    >>> from tariffs import load_tariffs
    >>> vectors = "tests/vectors/basic/"
    >>> catalog = Catalog.from_tariffs(load_tariffs(vectors + "plans", vectors + "accounts.toml"))
    >>> batch = parse_csv(open(vectors + "cdrs.csv", "rb").read())
    >>> whole = rate(batch, RatingState.empty(), catalog)
    >>> rate(prepare(batch, catalog), RatingState.empty(), catalog).rated.equals(whole.rated)
    True
    """
    batch = records_only(batch)
    extra = [c for c in batch.columns if c not in _BATCH_COLUMNS and c not in _OPTIONAL_COLUMNS]
    batch = batch.with_columns(
        pl.col(name).cast(dtype) if name in batch.columns else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in _OPTIONAL_COLUMNS.items()
    )
    # rechunk: a batch sliced out of a bigger frame shares its string buffers, and polars
    # 2.1 panicked in a string function over such a slice (tests/test_state.py).
    return PreparedBatch(_fields(batch.rechunk().with_row_index("row"), catalog), extra, catalog)


def rate(batch: pl.DataFrame | PreparedBatch, state: RatingState, catalog: Catalog) -> RatingResult:
    """Rate a batch of raw CDRs in log order.

    Parameters
    ----------
    batch
        ``line``, the 12 CDR columns as strings and ``framing`` (see
        ``schemas.cdr_csv.parse_chunk``); further columns (``source`` ...) are carried
        through to the outputs. Or such a batch already :func:`prepare`-d with ``catalog``.
    state
        The state after the previous batch (``RatingState.empty()`` before the first).
    catalog
        ``Catalog.from_tariffs(tariffs)``.

    Examples
    --------
    >>> from schemas.cdr_csv import parse_csv
    >>> from tariffs import load_tariffs
    >>> vectors = "tests/vectors/basic/"
    >>> catalog = Catalog.from_tariffs(load_tariffs(vectors + "plans", vectors + "accounts.toml"))
    >>> batch = parse_csv(open(vectors + "cdrs.csv", "rb").read())
    >>> result = rate(batch, RatingState.empty(), catalog)
    >>> result.rated.filter(pl.col("cdr_id") == "H00002").select("allowance_s", "amount").row(0)
    (60, 3000)
    """
    prepared = batch if isinstance(batch, PreparedBatch) else prepare(batch, catalog)
    if prepared.catalog is not catalog:
        raise ValueError("the batch was prepared with another catalogue than the one it is rated with")
    extra = prepared.extra
    judged, horizon_judged = _judge(prepared.frame, state, catalog)
    accepted = judged.filter(pl.col("reason").is_null())
    priced = _price(accepted, state, catalog)
    bursts = state.bursts
    rule = catalog.rules.unusual_calls
    if rule is not None:  # issue 25: bursts of calls (rating.unusual_calls)
        fired, bursts = burst_alerts(priced, state.bursts, rule)
        priced = priced.with_columns(unusual_calls=pl.col("row").is_in(fired.implode()))
    next_state, remembered = _next_state(state, judged, horizon_judged, priced, catalog, bursts)
    expiries = None
    if "credit_ends" in priced.columns:  # an account of the batch may have credit
        expiries = priced.filter(pl.col("credit_expired") > 0).select(
            "account_id", "cdr_id", "line", "credit_expired", "credit_refund",
            pl.col("credit_ends").alias("credit_expires"), (pl.col("balance") + pl.col("amount")).alias("balance"),
            *extra,
        )
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
            "credit_used",
            "credit",
            "line",
            "called",
            pl.col("charge").alias("charge_time"),
            "local_day",
            _from(catalog.accounts, "plan_id", "account_idx"),
            *[
                pl.when(pl.col("status") == "rated").then(expr).alias(expr.meta.output_name())
                for expr in (
                    _from(catalog.versions, "plan_version", "version_idx"),
                    _from(catalog.rates, "rate_segment", "rate_idx"),
                    pl.col("tier_first"),
                    pl.col("tier_last"),
                    pl.col("daily_cap"),
                )
            ],
            "offpeak_percent",
            "caller_origin",
            # What finance reads beside the price (docs/finance.md): not in rated.csv.
            "disposition",
            "caller",
            "caller_area",
            pl.col("billsec_n").alias("billsec"),
            (pl.col("day_second") // 3600).cast(pl.Int8).alias("local_hour"),
            *extra,
        ),
        rejected=_rejections(judged.filter(pl.col("reason").is_not_null()), horizon_judged, catalog, extra),
        alerts=_alerts(priced, extra),
        state=next_state,
        remembered=remembered,
        expiries=expiries,
    )


def _from(table: pl.DataFrame, column: str, index: str) -> pl.Expr:
    """``table[column]`` at the row named by the integer column ``index`` (null stays null)."""
    return pl.lit(table.get_column(column)).gather(pl.col(index)).alias(column)


def _fields(frame: pl.DataFrame, catalog: Catalog) -> pl.DataFrame:
    """What spec 4 steps 1-7 ask of each row, but for the duplicate check (no state)."""
    frame = with_typed_fields(frame)
    frame = frame.with_columns(
        malformed=malformed_flag(),
        malformed_before_account=malformed_flag(before_account=True),
        account_idx=_account_index(frame, catalog),
    )
    frame = frame.with_columns(
        _from(catalog.accounts, "account_id", "account_idx"),
        _from(catalog.accounts, "plan_idx", "account_idx"),
        passed_identity=~pl.col("malformed") & pl.col("account_idx").is_not_null(),
    ).with_columns(_SEEN_KEY)
    # One lazy plan for the rest: polars runs the independent steps side by side.
    frame = frame.lazy()
    answered_at = pl.col("answer")
    unbilled = (pl.col("disposition") != "ANSWERED") | (pl.col("billsec_n") == 0)
    frame = frame.with_columns(
        billsec_long=_billsec_longer_than_the_call(~unbilled),
        charge=pl.coalesce("answer", "start"),  # spec 4 step 5
        unbilled=unbilled,
    ).with_columns(
        invalid_time=(pl.col("end") < pl.col("start"))
        | (answered_at.is_not_null() & ((answered_at < pl.col("start")) | (answered_at > pl.col("end"))))
        | ((pl.col("disposition") == "ANSWERED") & answered_at.is_null())
        | pl.col("billsec_long"),
        out_of_bounds=catalog.time_bounds.outside(pl.col("charge"), pl.col("read_at")),
        caller_origin=pl.coalesce(
            "caller_origin",
            pl.when(pl.col("caller_area").fill_null("") == "").then(pl.lit("unknown")).otherwise(pl.lit("area")),
        ),
    )
    frame = frame.with_columns(local_time(catalog.timezones)).with_columns(
        calendar_keys(), version_idx=_version_in_force(catalog)
    )
    frame = frame.with_columns(**{"class": _call_class(catalog)})
    frame = frame.with_columns(
        class_code=pl.col("class").replace_strict(CLASS_CODES, return_dtype=pl.Int64),
    ).with_columns(rate_idx=_rate_index(catalog))
    return frame.collect(engine=_ENGINE)


def _account_index(frame: pl.DataFrame, catalog: Catalog) -> pl.Series:
    """Spec 4 step 2: each line's account (``account_idx``; null: none). The account the
    line was routed to when the batch says (``ROUTED_ACCOUNT``), else the number's: the
    one that held it at the call's charge time when it was transferred (rating.ownership)."""
    numbers = catalog.numbers
    ids = catalog.accounts.get_column("account_id")
    index = pl.int_range(0, len(ids), dtype=pl.Int64, eager=True)
    by_number = frame.select(
        pl.col("called").replace_strict(
            numbers.get_column("called"), numbers.get_column("account_idx"), default=None, return_dtype=pl.Int64
        )
    ).to_series()
    if ROUTED_ACCOUNT in frame.columns:
        routed = frame.get_column(ROUTED_ACCOUNT)
        by_key = routed.replace_strict(ids, index, default=None, return_dtype=pl.Int64)
        return by_key.zip_with(routed.is_not_null(), by_number).alias("account_idx")
    if catalog.owners.height == 0:
        return by_number.alias("account_idx")
    held = owner_at(frame.select("called", pl.coalesce("answer", "start").alias("charge")), catalog.owners)
    by_owner = held.get_column("owner").replace_strict(ids, index, default=None, return_dtype=pl.Int64)
    return by_owner.zip_with(held.get_column("owned"), by_number).alias("account_idx")


def _judge(frame: pl.DataFrame, state: RatingState, catalog: Catalog) -> tuple[pl.DataFrame, Judged]:
    """Spec 4 steps 1-7 on a prepared frame, with the horizon's ``late`` after step 2: the
    first rejection wins; ``reason`` stays null for the rest."""
    # A call outside the time bounds is no call: it moves no watermark and is not remembered.
    passed = frame.select(
        "passed_identity", "out_of_bounds", "row", "account_idx", "account_id", "cdr_id", "month_key", "seen_hash", "unbilled",
    ).filter(pl.col("passed_identity") & ~pl.col("out_of_bounds"))
    judged = judge_horizon(passed, state.seen, _seen_hashes(state), state.latest, catalog.horizon_months)
    reason = (
        pl.when(pl.col("malformed_before_account"))
        .then(pl.lit("malformed"))
        .when(pl.col("account_idx").is_null())
        .then(pl.lit("unknown_number"))
        .when(pl.col("malformed"))
        .then(pl.lit("malformed"))
        .when(pl.col("out_of_bounds"))
        .then(pl.lit("invalid_time"))
        .when(pl.col("late"))
        .then(pl.lit("late"))
        .when(pl.col("duplicate"))
        .then(pl.lit("duplicate"))
        .when(pl.col("invalid_time"))
        .then(pl.lit("invalid_time"))
        .when(~pl.col("unbilled") & pl.col("rate_idx").is_null())
        .then(pl.lit("no_rate"))
    )
    row = pl.col("row")
    frame = frame.with_columns(
        late=row.is_in(pl.lit(judged.late).implode()),
        duplicate=row.is_in(pl.lit(judged.duplicate).implode()),
    ).with_columns(reason=reason)
    return frame, judged


_SEEN_KEY = pl.struct("account_id", "cdr_id").hash().alias("seen_hash")


def _seen_hashes(state: RatingState) -> pl.Series:
    """``_SEEN_KEY`` of each row of ``state.seen``, worked out once per state."""
    return state.derived("seen_hash", (state.seen,), lambda: state.seen.select(_SEEN_KEY).to_series())


def _rejections(rejected: pl.DataFrame, judged: Judged, catalog: Catalog, extra: list[str]) -> pl.DataFrame:
    """The rejected rows with a sentence each saying what was wrong (few rows: cheap)."""
    if judged.watermark.height:
        rejected = rejected.join(judged.watermark, on="row", how="left", maintain_order="left")
    else:
        rejected = rejected.with_columns(watermark=pl.lit(None, dtype=pl.Int64))
    rejected = rejected.with_columns(
        _from(catalog.accounts, "plan_id", "account_idx"),
        _from(catalog.versions, "plan_version", "version_idx"),
    )
    answered_at = pl.col("answer")
    reason = pl.col("reason")
    detail = (
        pl.when(reason == "malformed")
        .then(malformed_detail())
        .when(reason == "unknown_number")
        .then(pl.format("called number {} belongs to no account", pl.col("called").fill_null("")))
        .when(reason == "late")
        .then(
            pl.format(
                "charge time {} is in {}, older than the horizon: account {} has calls of {}, "
                "so calls before {} are late ({} month(s) back are judged; a correction run can rate it)",
                pl.col("charge").dt.to_string("%Y-%m-%dT%H:%M:%SZ"),
                _month_text(pl.col("month_key")),
                pl.col("account_id"),
                _month_text(pl.col("watermark")),
                _month_text(pl.col("watermark") - catalog.horizon_months),
                pl.lit(catalog.horizon_months),
            )
        )
        .when(reason == "duplicate")
        .then(pl.format("cdr_id {} was already seen for account {}", pl.col("cdr_id"), pl.col("account_id")))
        .when((reason == "invalid_time") & pl.col("out_of_bounds"))
        .then(catalog.time_bounds.detail(pl.col("charge"), pl.col("read_at")))
        .when((reason == "invalid_time") & (pl.col("end") < pl.col("start")))
        .then(pl.lit("end_time is before start_time"))
        .when((reason == "invalid_time") & answered_at.is_not_null() & ((answered_at < pl.col("start")) | (answered_at > pl.col("end"))))
        .then(pl.lit("answer_time is outside [start_time, end_time]"))
        .when((reason == "invalid_time") & pl.col("billsec_long"))
        .then(
            pl.format(
                "billsec {} is more than the {} s from answer_time to end_time ({} s tolerance)",
                pl.col("billsec_n"),
                _answered_seconds().round(3).cast(pl.String).str.replace(r"\.0$", ""),
                pl.lit(BILLSEC_TOLERANCE_S),
            )
        )
        .when(reason == "invalid_time")
        .then(pl.lit("disposition ANSWERED without answer_time"))
        .when(pl.col("version_idx").is_null())
        .then(
            pl.format(
                "no version of plan {} is in force at {}",
                pl.col("plan_id"),
                pl.col("charge").dt.to_string("%Y-%m-%dT%H:%M:%SZ"),
            )
        )
        .otherwise(
            pl.format(
                "plan {} (version {}) has no {} rate for {}",
                pl.col("plan_id"),
                pl.col("plan_version"),
                pl.col("class"),
                pl.col("called"),
            )
        )
    )
    return rejected.select(
        "line",
        pl.col("cdr_id").fill_null(""),
        "reason",
        detail.alias("detail"),
        # The fields of a malformed line are not trusted, its number included.
        pl.when(reason != "malformed").then(pl.col("account_id")).alias("account_id"),
        *extra,
    )


def _month_text(month_key: pl.Expr) -> pl.Expr:
    """``YYYY-MM`` of a month key (year * 12 + month - 1)."""
    return pl.format(
        "{}-{}", (month_key // 12).cast(pl.String), (month_key % 12 + 1).cast(pl.String).str.zfill(2)
    )


def _call_class(catalog: Catalog) -> pl.Expr:
    # spec 4 step 5: + or 00 marks an international caller. A caller with no area is of
    # the class its plan version says (docs/rules.md); with no version in force, the default.
    area = pl.col("caller_area").fill_null("")
    unknown = _from(catalog.versions, "unknown_caller_class", "version_idx").fill_null(
        PlanVersion.model_fields["unknown_caller_class"].default
    )
    return (
        pl.when(pl.col("caller_origin") == "unknown")
        .then(unknown)
        .when(area.str.starts_with("+") | area.str.starts_with("00"))
        .then(pl.lit("international"))
        .when(area == pl.col("answer_area").fill_null(""))
        .then(pl.lit("local"))
        .otherwise(pl.lit("long_distance"))
    )


#: How many seconds billsec may exceed the time from answer to end: switches truncate the
#: printed times and round billsec each their own way (Asterisk, FreeSWITCH: by up to 1 s).
BILLSEC_TOLERANCE_S = 1


def _answered_seconds() -> pl.Expr:
    return (pl.col("end") - pl.col("answer")).dt.total_microseconds() / 1_000_000


def _billsec_longer_than_the_call(billed: pl.Expr) -> pl.Expr:
    """A billed call whose billsec is more than its answer -> end (docs/rules.md): the
    switch's count cannot be trusted, and billing it would charge time no one talked."""
    micros = (pl.col("end") - pl.col("answer")).dt.total_microseconds()
    return (
        billed & pl.col("answer").is_not_null() & (pl.col("billsec_n") * 1_000_000 > micros + BILLSEC_TOLERANCE_S * 1_000_000)
    ).fill_null(False)


def _version_in_force(catalog: Catalog) -> pl.Expr:
    """The version with the latest ``effective_from <= charge`` (spec 2.1), else null."""
    expr: pl.Expr = pl.lit(None, dtype=pl.Int64)
    rows = catalog.versions.select("plan_idx", "effective_from").iter_rows()
    for version_idx, (plan_idx, effective_from) in enumerate(rows):
        # A plan's versions are in effective_from order, so later ones win.
        in_force = (pl.col("plan_idx") == plan_idx) & (pl.col("charge") >= pl.lit(effective_from))
        expr = pl.when(in_force).then(pl.lit(version_idx, dtype=pl.Int64)).otherwise(expr)
    return expr


def _rate_index(catalog: Catalog) -> pl.Expr:
    """The rate of the longest segment that prefixes the called number (spec 2.1); of one
    segment, the call's class before ``*`` (any class, issue 23)."""
    found: pl.Expr = pl.lit(None, dtype=pl.Int64)
    for length, keys, indices in reversed(catalog.rate_keys):  # longest last: it wins
        prefix = pl.lit(0, dtype=pl.Int64) if length == 0 else pl.col("called").str.slice(0, length).cast(pl.Int64, strict=False)
        exact = rate_key(pl.col("version_idx"), pl.col("class_code"), prefix)
        any_class = rate_key(pl.col("version_idx"), ANY_CLASS_CODE, prefix)
        match = pl.coalesce(
            exact.replace_strict(keys, indices, default=None, return_dtype=pl.Int64),
            any_class.replace_strict(keys, indices, default=None, return_dtype=pl.Int64),
        )
        found = pl.coalesce(match, found)
    return found


def _price(frame: pl.DataFrame, state: RatingState, catalog: Catalog) -> pl.DataFrame:
    """Spec 4 step 8 and spec 5 for the accepted rows (rated and unbilled), in log order."""
    rated = ~pl.col("unbilled")
    versions = catalog.versions
    frame = frame.with_columns(
        _from(versions, "increment_first", "version_idx"),
        _from(versions, "increment_next", "version_idx"),
        _from(versions, "per_call_minimum", "version_idx"),
        _from(versions, "offpeak_percent", "version_idx"),
        _from(catalog.accounts, "opening_balance", "account_idx"),
        _from(catalog.accounts, "low_balance_threshold", "account_idx"),
        _from(catalog.accounts, "account_daily_cap", "account_idx"),
        _from(catalog.accounts, "package_price", "account_idx"),
        _from(catalog.accounts, "opening_credit", "account_idx"),
        _from(catalog.accounts, "opening_credit_expires", "account_idx"),
        _from(catalog.accounts, "opening_credit_refund", "account_idx"),
        _from(catalog.rates, "rate_any_class", "rate_idx"),
        *[_from(catalog.rates, f"tier_{part}_{k}", "rate_idx") for part in ("hi", "price") for k in range(catalog.tier_count)],
        k_month=pl.col("account_idx") * _SHIFT + pl.col("month_key"),
        k_day=pl.col("account_idx") * _SHIFT + _DAY_NUMBER,
        plan_month=pl.col("plan_idx").cast(pl.Int64) * _SHIFT + pl.col("month_key"),
        plan_day=pl.col("plan_idx").cast(pl.Int64) * _SHIFT + _DAY_NUMBER,
        status=pl.when(rated).then(pl.lit("rated")).otherwise(pl.lit("unbilled")),
    )
    first, step, billsec = pl.col("increment_first"), pl.col("increment_next"), pl.col("billsec_n")
    billable = pl.when(billsec <= first).then(first).otherwise(first + (billsec - first + step - 1) // step * step)
    included_keys, included = catalog.month_included_s(frame.get_column("plan_month"))
    cap_keys, caps = catalog.day_caps(frame.get_column("plan_day"))
    frame = frame.with_columns(
        billable_s=pl.when(rated).then(billable).otherwise(0),
        # spec 4: international calls use no allowance, unless a "*" rate prices them
        uses_allowance=rated & ((pl.col("class") != "international") | pl.col("rate_any_class").fill_null(False)),
        k_class=pl.col("k_month") * 4 + pl.col("class_code"),
        included_s=pl.col("plan_month").replace_strict(included_keys, included, default=0, return_dtype=pl.Int64),
        daily_cap=pl.coalesce(
            "account_daily_cap",
            pl.col("plan_day").replace_strict(cap_keys, caps, default=None, return_dtype=pl.Int64),
        ),
    )
    # Lazy plans from here on (polars runs independent steps side by side), cut for the
    # running totals per account, month and class and per account and day, which a sort
    # works out cheaper than a window over their many small groups (rating.running).
    frame = _with_state(frame, state, catalog).lazy()
    frame = (
        frame.with_columns(allowance_s())
        .with_columns(charged_s=pl.col("billable_s") - pl.col("allowance_s"))
        .collect(engine=_ENGINE)
    )
    frame = (
        with_tier_start(frame)
        .lazy()
        .with_columns(tier_seconds(catalog.tier_count))
        .with_columns(tier_columns(catalog.tier_count))
        .with_columns(
            base=pl.when(rated).then(round_half_up(pl.col("raw"), 60)).otherwise(0),
            offpeak=(rated & offpeak(catalog)).fill_null(False),
        )
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
        )
        .with_columns(pre=pl.col("base") - pl.col("discount") + pl.col("minimum_uplift"))
        .collect(engine=_ENGINE)
    )
    frame = (
        day_running_totals(frame)
        .lazy()
        .with_columns(capped_amount(), spent_after())
        .with_columns(cap_waived=pl.col("pre") - pl.col("amount"), cap_reached=cap_reached())
    )
    # Package credit first, then the balance (rating.credit); alerts judge both together.
    frame = with_credit(frame) if _has_credit(state, catalog) else without_credit(frame)
    threshold = pl.col("low_balance_threshold")
    before, after = pl.col("funds_before"), pl.col("funds_after")
    return frame.with_columns(
        low_balance=rated & (before >= threshold) & (after < threshold),
        arrears=rated & (before >= 0) & (after < 0),
        offpeak_percent=pl.when(pl.col("offpeak")).then(pl.col("offpeak_percent")).otherwise(0),
    ).collect(engine=_ENGINE)


def _with_state(frame: pl.DataFrame, state: RatingState, catalog: Catalog) -> pl.DataFrame:
    """Seed the running totals with what earlier batches left (zeros for a fresh state)."""

    def seeds(name: str, batch_key: str, defaults: dict[str, object]) -> list[pl.Series | pl.Expr]:
        table: pl.DataFrame = getattr(state, name)
        if table.height == 0:
            return [pl.lit(d, dtype=table.schema[c]).alias(c) for c, d in defaults.items()]
        # One left join per table finds every row's values (keys are unique in the table);
        # cheaper than a lookup map per value column, and it keeps the batch's row order.
        keyed = _keyed_state(state, name, catalog).rename({"key": batch_key})
        found = frame.select(batch_key).join(keyed, on=batch_key, how="left", maintain_order="left")
        return [found.get_column(c).fill_null(d) if d is not None else found.get_column(c) for c, d in defaults.items()]

    (balance_seed,) = seeds("balances", "account_idx", {"balance": None})
    frame = frame.with_columns(
        *seeds("allowance", "k_month", {"allowance_used_s": 0}),
        *seeds("charged", "k_class", {"charged_before_s": 0}),
        *seeds("daily", "k_day", {"spent_before": 0, "cap_alerted": False}),
        # An account the state does not know yet bought its package when it opened (issue 23).
        balance_before_batch=pl.coalesce(balance_seed, pl.col("opening_balance") - pl.col("package_price")),
    )
    if not _has_credit(state, catalog):
        return frame
    credit, ends, refund = seeds("credits", "account_idx", {"credit": None, "credit_expires": None, "credit_refund": None})
    known = _expr(balance_seed).is_not_null()
    return frame.with_columns(
        credit_before_batch=pl.when(known).then(_expr(credit).fill_null(0)).otherwise(pl.col("opening_credit")),
        credit_ends=pl.when(known).then(_expr(ends)).otherwise(pl.col("opening_credit_expires")),
        credit_refund=pl.when(known).then(_expr(refund).fill_null(False)).otherwise(pl.col("opening_credit_refund")),
    )


def _expr(value: pl.Series | pl.Expr) -> pl.Expr:
    return pl.lit(value) if isinstance(value, pl.Series) else value


def _has_credit(state: RatingState, catalog: Catalog) -> bool:
    """Whether an account may have package credit: else the batch is charged to balances
    alone, with none of the credit's column work (rating.credit)."""
    return state.credits.height > 0 or catalog.has_credit


#: The integer key of each state table's rows, as the batch computes it (``k_month`` ...),
#: from the table's columns and the row's ``account_idx``.
_STATE_KEYS: dict[str, pl.Expr] = {
    "balances": pl.col("account_idx"),
    "allowance": pl.col("account_idx") * _SHIFT + pl.col("month_key"),
    "charged": (pl.col("account_idx") * _SHIFT + pl.col("month_key")) * 4
    + pl.col("class").replace_strict(CLASS_CODES, return_dtype=pl.Int64),
    "daily": pl.col("account_idx") * _SHIFT + _DAY_NUMBER,
    "credits": pl.col("account_idx"),
}


def _keyed_state(state: RatingState, name: str, catalog: Catalog) -> pl.DataFrame:
    """``key`` and the values of a state table's rows whose account the catalogue knows.

    Kept with the state (the daily table grows with the log): worked out once per table
    and catalogue, or carried over from the batch before by :func:`_next_state`.
    """
    table: pl.DataFrame = getattr(state, name)

    def build() -> pl.DataFrame:
        index = catalog.accounts.select("account_id").with_row_index("account_idx").with_columns(
            pl.col("account_idx").cast(pl.Int64)
        )
        values = [c for c in table.columns if c not in ("account_id", "month_key", "class", "local_day")]
        keyed = table.join(index, on="account_id").select(_STATE_KEYS[name].alias("key"), *values)
        # The daily table is kept sorted by key, for _add_daily's merge.
        return keyed.sort("key") if name == "daily" else keyed

    return state.derived(f"{name}_keyed", (table, catalog.accounts), build)


def _alerts(priced: pl.DataFrame, extra: list[str]) -> pl.DataFrame:
    """Spec 5: alerts in log order; one call's alerts in the order of ``ALERT_KINDS``."""
    flags = {"daily_cap_reached": "cap_reached", "low_balance": "low_balance", "arrears": "arrears"}
    if "unusual_calls" in priced.columns:
        flags["unusual_calls"] = "unusual_calls"
    # Narrow first: an eager filter copies every column of the wide priced frame.
    narrow = priced.select("row", "account_id", "cdr_id", "balance", "line", "local_day", *extra, *flags.values())
    parts = [
        narrow.filter(pl.col(flags[kind])).select(
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
        if kind in flags  # unusual_spend is the ledger's (rating.ledger)
    ]
    return pl.concat(parts).sort("row", "kind_order").drop("row", "kind_order")


def _next_state(
    state: RatingState, judged: pl.DataFrame, horizon: Judged, priced: pl.DataFrame, catalog: Catalog,
    bursts: pl.DataFrame,
) -> tuple[RatingState, pl.DataFrame]:
    """Fold the batch into the state: totals add up, the last balance wins, and what falls
    out of an account's horizon is forgotten (rating.horizon). Also gives the ids the
    batch remembered."""
    account = _from(catalog.accounts, "account_id", "account_idx")
    rated = priced.select(
        "status", "account_idx", "month_key", "class", "local_day", "k_month", "k_class", "k_day",
        "allowance_s", "charged_s", "amount", "cap_reached",
    ).filter(pl.col("status") == "rated")
    last = priced.filter(pl.col("account_idx").is_last_distinct())
    balances = last.select(account, "balance")
    credits = state.credits
    if "credit_ends" in priced.columns:
        # The credit each account of the batch has left; none once it has ended (rating.credit).
        left = last.filter(pl.col("credit_ends").is_not_null() & ~pl.col("credit_ended")).select(
            account, "credit", pl.col("credit_ends").alias("credit_expires"), "credit_refund"
        )
        credits = pl.concat([credits.join(last.select(account), on="account_id", how="anti"), left.cast(credits.schema)])
    allowance = (
        rated.filter(pl.col("allowance_s") > 0)
        .group_by("k_month")
        .agg(pl.col("account_idx").first(), pl.col("month_key").first(), allowance_used_s=pl.col("allowance_s").sum())
        .select(account, "month_key", "allowance_used_s")
    )
    charged = (
        rated.filter(pl.col("charged_s") > 0)
        .group_by("k_class")
        .agg(
            pl.col("account_idx").first(),
            pl.col("month_key").first(),
            pl.col("class").first(),
            charged_before_s=pl.col("charged_s").sum(),
        )
        .select(account, "month_key", "class", "charged_before_s")
    )
    daily = rated.group_by(pl.col("k_day").alias("key")).agg(
        spent_before=pl.col("amount").sum(), cap_alerted=pl.col("cap_reached").any()
    )
    remembered = (
        judged.select(
            "passed_identity", "out_of_bounds", "late", "duplicate", "account_id", "cdr_id", "month_key", "seen_hash", "unbilled",
        )
        .filter(pl.col("passed_identity") & ~pl.col("out_of_bounds") & ~pl.col("late") & ~pl.col("duplicate"))
        .with_columns(cdr_id=memory_id(pl.col("cdr_id"), pl.col("unbilled")))
    )
    if remembered.height and remembered.get_column("unbilled").any():
        remembered = remembered.with_columns(_SEEN_KEY)
    seen = pl.concat([state.seen, remembered.select("account_id", "cdr_id", "month_key")])
    seen_hashes = pl.concat([_seen_hashes(state), remembered.get_column("seen_hash")])
    daily_table, daily_keyed = _add_daily(state, daily, catalog)
    latest = pl.concat([state.latest.join(horizon.latest, on="account_id", how="anti"), horizon.latest])
    tables = {
        "balances": pl.concat([state.balances.join(balances, on="account_id", how="anti"), balances]),
        "allowance": _add(state.allowance, allowance, ["account_id", "month_key"]),
        "charged": _add(state.charged, charged, ["account_id", "month_key", "class"]),
        "daily": daily_table,
        "seen": seen,
    }
    # Accounts whose watermark moved on forget the months now out of their horizon.
    moved = horizon.latest.join(state.latest, on="account_id", how="left", suffix="_before").filter(
        pl.col("latest_month_before").is_null() | (pl.col("latest_month") > pl.col("latest_month_before"))
    )
    account_floors = floors(moved, catalog.horizon_months)
    if account_floors.height:
        lowest_floor = account_floors.get_column("floor").min()
        for name, month in _MONTH_OF.items():
            table = tables[name]
            if table.height == 0:
                continue
            # Nothing is forgotten while the table's oldest month is within every moved
            # account's horizon: the usual batch, whose calls moved a watermark within a
            # month (a minimum is far cheaper than the join of keep_mask).
            oldest = table.select(month.min()).item()
            if oldest is not None and lowest_floor is not None and oldest >= lowest_floor:
                continue
            keep = keep_mask(table, month, account_floors)
            if not keep.all():
                tables[name] = table.filter(keep)
                if name == "seen":
                    seen_hashes = seen_hashes.filter(keep)
    new_state = RatingState(**tables, latest=latest, credits=credits, bursts=bursts)
    # What the next batch looks up in the tables that grow with the traffic, worked out
    # from this batch's part rather than again from the whole table.
    new_state.remember("seen_hash", (new_state.seen,), seen_hashes)
    if daily_keyed is not None and new_state.daily is daily_table:
        new_state.remember("daily_keyed", (daily_table, catalog.accounts), daily_keyed)
    return new_state, remembered.select("account_id", "cdr_id", "month_key")


#: The charge month of a state table's rows, for forgetting what leaves the horizon.
_MONTH_OF: dict[str, pl.Expr] = {
    "allowance": pl.col("month_key"),
    "charged": pl.col("month_key"),
    "daily": month_key(pl.col("local_day")),
    "seen": pl.col("month_key"),
}


def _add_daily(state: RatingState, delta: pl.DataFrame, catalog: Catalog) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The daily table after a batch (``delta``: ``key`` = ``k_day``), and its keyed form.

    Added up by integer key, which is cheaper than by name and day; when the table holds
    accounts the catalogue no longer knows, by name (their rows are kept), with no keyed form.
    """
    day = (pl.col("key") % _SHIFT).cast(pl.Int32).cast(pl.Date).alias("local_day")
    account = pl.lit(catalog.accounts.get_column("account_id")).gather(pl.col("key") // _SHIFT).alias("account_id")
    before = _keyed_state(state, "daily", catalog)
    if before.height != state.daily.height:
        named = delta.select(account, day, "spent_before", "cap_alerted")
        return _add(state.daily, named, ["account_id", "local_day"]), None
    # Both sorted by key, each key once: merged, a key is on at most two adjacent rows.
    merged = before.merge_sorted(delta.cast(before.schema).sort("key"), key="key")
    key = pl.col("key")
    after_same = (key == key.shift(1)).fill_null(False)
    keyed = merged.with_columns(
        pl.col("spent_before") + pl.when(after_same).then(pl.col("spent_before").shift(1)).otherwise(0),
        pl.col("cap_alerted") | (after_same & pl.col("cap_alerted").shift(1)).fill_null(False),
    ).filter((key != key.shift(-1)).fill_null(True))
    table = keyed.select(account, day, "spent_before", "cap_alerted").cast(state.daily.schema)
    return table, keyed


def _add(before: pl.DataFrame, delta: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Totals per key after a batch: sums add up, flags stay raised."""
    delta = delta.select(before.columns).cast(before.schema)
    if before.height == 0:
        return delta
    values = [c for c in before.columns if c not in keys]
    aggregations = [pl.col(c).any() if before.schema[c] == pl.Boolean else pl.col(c).sum() for c in values]
    return pl.concat([before, delta]).group_by(keys, maintain_order=True).agg(aggregations)
