"""The horizon: how far back in time an account's log is still judged (docs/rules.md).

A billing pipeline runs for years on the same accounts, so what rating remembers must be
bounded by time, not by history. Each account has a **watermark**: the latest local
charge month (``month_key`` of the plan's calendar) of the calls of its log that passed
spec 4 steps 1-2 so far, in log order, the call itself included. With a horizon of
``h`` months:

- a call whose charge month is earlier than ``watermark - h`` is rejected ``late``
  (after step 2, before the duplicate check): nothing rating still holds can judge it;
  a correction run of its period can rate it;
- the duplicate check (spec 4 step 3) looks only at the calls remembered with a charge
  month of at least ``watermark - h``; older ones are forgotten;
- the state keeps only months ``>= watermark - h`` (allowance, charged seconds, daily
  totals, remembered ids).

Everything depends on the log order only (the watermark of a call is a running maximum
over the calls before it), so rating a log in any split of batches gives the same
results, and forgetting what is older than the horizon after each batch changes nothing:
no later call can reach it.

**Several records of one call** share its id (Asterisk writes one per party a channel
dialled, all with the channel's uniqueid; docs/rules.md): a record that would be billed
(answered, billsec > 0) is a duplicate only of a record that would have been billed too,
and an unbilled record (unanswered, or 0 s) of any record. So the 0 s or unanswered legs
of a call never make its billed leg a duplicate, a second unbilled leg adds no second
missed call, and a resent file is still all duplicates. Each id is remembered with its
kind: an unbilled record's id with :data:`UNBILLED_MARK` after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

#: Months before the watermark still judged: a call of the watermark's month or of the
#: month before it is rated; anything older is ``late``.
DEFAULT_HORIZON_MONTHS = 1
#: Follows the ``cdr_id`` of an unbilled record in what the state remembers (a record
#: of a line: no line holds this byte in a field it keeps as an id).
UNBILLED_MARK = "\x1funbilled"


def memory_id(cdr_id: pl.Expr, unbilled: pl.Expr) -> pl.Expr:
    """The id a record is remembered by: its ``cdr_id``, marked when it is unbilled."""
    return pl.when(unbilled).then(cdr_id + UNBILLED_MARK).otherwise(cdr_id)


@dataclass(frozen=True)
class Judged:
    """What the horizon decided for a batch's rows that passed steps 1-2.

    Attributes
    ----------
    late
        ``row`` of each call older than its account's horizon.
    duplicate
        ``row`` of each call whose ``cdr_id`` the account remembers within the horizon.
    watermark
        ``row`` and ``watermark`` (the account's latest month up to and including the
        row) of each late call: what its rejection names.
    latest
        ``account_id, latest_month`` after the batch, for each account of the batch.
    """

    late: pl.Series
    duplicate: pl.Series
    watermark: pl.DataFrame
    latest: pl.DataFrame


def judge_horizon(passed: pl.DataFrame, seen: pl.DataFrame, seen_hashes: pl.Series, latest: pl.DataFrame, horizon: int) -> Judged:
    """Late and duplicate calls among ``passed`` (the rows that passed steps 1-2).

    Parameters
    ----------
    passed
        ``row, account_idx, account_id, cdr_id, month_key, seen_hash, unbilled`` in log
        order (``seen_hash``: of the account and ``cdr_id``, unmarked).
    seen
        The state's remembered ids: ``account_id, cdr_id, month_key``.
    seen_hashes
        ``seen_hash`` of each row of ``seen`` (kept with the state).
    latest
        The state's watermarks: ``account_id, latest_month``.
    horizon
        Months before the watermark still judged.

    Examples
    --------
    >>> passed = pl.DataFrame({"row": [0, 1, 2], "account_idx": [0, 0, 0], "account_id": ["A"] * 3,
    ...                        "cdr_id": ["x", "y", "x"], "month_key": [24302, 24304, 24302]})
    >>> passed = passed.with_columns(seen_hash=pl.struct("account_id", "cdr_id").hash(), unbilled=False)
    >>> seen = pl.DataFrame(schema={"account_id": pl.String, "cdr_id": pl.String, "month_key": pl.Int64})
    >>> none = pl.DataFrame(schema={"account_id": pl.String, "latest_month": pl.Int64})
    >>> judged = judge_horizon(passed, seen, pl.Series([], dtype=pl.UInt64), none, 1)
    >>> judged.late.to_list(), judged.duplicate.to_list(), judged.latest.rows()
    ([2], [], [('A', 24304)])
    """
    seeded = passed.join(latest, on="account_id", how="left", maintain_order="left")
    per_account = seeded.group_by("account_idx").agg(
        pl.col("account_id").first(),
        pl.col("month_key").min().alias("lowest"),
        pl.max_horizontal(pl.col("month_key").max(), pl.col("latest_month").first()).alias("latest_month"),
    )
    new_latest = per_account.select("account_id", "latest_month")
    # Only an account whose batch reaches back past its horizon can have a late call; in
    # the usual batch there is none and the running maximum is not needed.
    behind = per_account.filter(pl.col("lowest") < pl.col("latest_month") - horizon).get_column("account_idx")
    late = pl.Series("row", [], dtype=passed.schema["row"])
    watermark = pl.DataFrame(schema={"row": passed.schema["row"], "watermark": pl.Int64})
    if behind.len():
        running = _running_watermark(seeded.filter(pl.col("account_idx").is_in(behind.implode())))
        late_rows = running.filter(pl.col("month_key") < pl.col("watermark") - horizon)
        late = late_rows.get_column("row")
        watermark = late_rows.select("row", "watermark")
    on_time = passed if late.len() == 0 else passed.filter(~pl.col("row").is_in(late.implode()))
    duplicate = _duplicates(on_time, seeded, seen, seen_hashes, new_latest, horizon)
    return Judged(late=late, duplicate=duplicate, watermark=watermark, latest=new_latest)


def _running_watermark(seeded: pl.DataFrame) -> pl.DataFrame:
    """``row, month_key, watermark``: each row's account's latest month up to and including it."""
    return seeded.select(
        "row",
        "month_key",
        pl.max_horizontal(pl.col("month_key").cum_max().over("account_idx"), pl.col("latest_month")).alias(
            "watermark"
        ),
    )


def _duplicates(
    on_time: pl.DataFrame,
    seeded: pl.DataFrame,
    seen: pl.DataFrame,
    seen_hashes: pl.Series,
    latest: pl.DataFrame,
    horizon: int,
) -> pl.Series:
    """Rows whose (account, cdr_id) is remembered within the horizon (spec 4 step 3), a
    billed record's only by a billed one (module docstring).

    A hash finds the few candidates cheaply (ids repeated in the batch, or found among the
    state's, marked or not); for those, one pass in log order applies the rule exactly: a
    call is a duplicate when an id that blocks it was remembered with a month
    ``>= watermark - horizon``, otherwise it is remembered itself.
    """
    hashes = on_time.get_column("seen_hash")
    in_batch = on_time.filter(pl.col("seen_hash").is_duplicated())
    if seen.height:
        marked = on_time.select(pl.struct("account_id", pl.col("cdr_id") + UNBILLED_MARK).hash()).to_series()
        remembered = seen.filter(seen_hashes.is_in(pl.concat([hashes, marked]).implode()))
    else:
        remembered = seen
    bare = remembered.with_columns(pl.col("cdr_id").str.strip_suffix(UNBILLED_MARK))
    candidates = pl.concat([in_batch, on_time.join(bare, on=["account_id", "cdr_id"], how="semi")]).unique("row")
    if candidates.height == 0:
        return pl.Series("row", [], dtype=on_time.schema["row"])
    one_kind = in_batch.group_by("account_idx", "cdr_id").agg(pl.col("unbilled").n_unique() == 1).get_column("unbilled").all()
    if remembered.height == 0 and one_kind and _all_within_horizon(candidates, latest, horizon):
        # Repeats inside one batch, all of one kind and of a month within the horizon of
        # their account's latest month after the batch (so of every watermark before):
        # every repeat after the first is a duplicate (the common case).
        return in_batch.filter(~pl.struct("account_idx", "cdr_id").is_first_distinct()).get_column("row")
    accounts = candidates.get_column("account_idx").unique().implode()
    marks = _running_watermark(seeded.filter(pl.col("account_idx").is_in(accounts)))
    candidates = candidates.join(marks.select("row", "watermark"), on="row").sort("row")
    latest: dict[tuple[str, str], int] = {}
    for account_id, cdr_id, month_key in remembered.iter_rows():
        key = (account_id, cdr_id)
        latest[key] = max(month_key, latest.get(key, month_key))
    rows = []
    for row, account_id, cdr_id, month_key, mark, unbilled in candidates.select(
        "row", "account_id", "cdr_id", "month_key", "watermark", "unbilled"
    ).iter_rows():
        blocking = [(account_id, cdr_id), (account_id, cdr_id + UNBILLED_MARK)] if unbilled else [(account_id, cdr_id)]
        if any(latest.get(key, mark - horizon - 1) >= mark - horizon for key in blocking):
            rows.append(row)
        else:
            latest[(account_id, cdr_id + UNBILLED_MARK if unbilled else cdr_id)] = month_key
    return pl.Series("row", rows, dtype=on_time.schema["row"])


def _all_within_horizon(candidates: pl.DataFrame, latest: pl.DataFrame, horizon: int) -> bool:
    """Whether every candidate's month is within the horizon of its account's final watermark."""
    marked = candidates.select("account_id", "month_key").join(latest, on="account_id", how="left")
    return bool(marked.select((pl.col("month_key") >= pl.col("latest_month") - horizon).all()).item())


def floors(latest: pl.DataFrame, horizon: int) -> pl.DataFrame:
    """``account_id, floor``: the earliest month each account still keeps."""
    return latest.select("account_id", (pl.col("latest_month") - horizon).alias("floor"))


def keep_mask(table: pl.DataFrame, month: pl.Expr, account_floors: pl.DataFrame) -> pl.Series:
    """Rows of a state table within their account's horizon (``account_floors``: the
    accounts whose watermark moved; others keep every row)."""
    floor = table.select("account_id").join(account_floors, on="account_id", how="left", maintain_order="left")
    return (floor.get_column("floor").is_null() | (table.select(month).to_series() >= floor.get_column("floor"))).alias(
        "keep"
    )
