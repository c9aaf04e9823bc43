"""Spec 4 step 1: which raw fields make a CDR malformed, and their typed values."""

from __future__ import annotations

import re

import polars as pl

from schemas.columns import ANSWER_PROBLEM, DISPOSITIONS

# ISO 8601 with an offset: 2026-03-02T09:15:00+08:00, ...Z, ...+0800, optional fraction.
# Seconds 00-59: a leap second (:60) is no time a switch should bill.
_ISO_WITH_OFFSET = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:[0-5]\d(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$"
# Fractions up to nanoseconds are read, and kept to the microsecond.
_SUFFIX = re.compile(r"^(?:\.(\d{1,9}))?(?:(Z)|([+-])(\d{2}):?(\d{2}))$")
_MAX_BILLSEC_DIGITS = 9  # 31 years of talk: anything longer is not a call
_TIME_COLUMNS = {"start_time": "start", "answer_time": "answer", "end_time": "end"}


def with_typed_fields(frame: pl.DataFrame) -> pl.DataFrame:
    """Add typed columns ``start``, ``answer``, ``end`` (UTC instants) and ``billsec_n``.

    A value that does not parse is null. Times are read as their wall-clock part plus a
    suffix (fraction and offset): a log holds few distinct suffixes, so each is worked out
    once, and the wall-clock part takes polars' fast fixed-format parser.

    Examples
    --------
    >>> frame = pl.DataFrame({"start_time": ["2026-03-02T09:15:00+08:00"], "answer_time": [""],
    ...     "end_time": ["2026-03-02T01:16:00.5Z"], "billsec": ["60"]})
    >>> with_typed_fields(frame).select("start", "end", "billsec_n").row(0)  # doctest: +NORMALIZE_WHITESPACE
    (datetime.datetime(2026, 3, 2, 1, 15, tzinfo=zoneinfo.ZoneInfo(key='UTC')),
     datetime.datetime(2026, 3, 2, 1, 16, 0, 500000, tzinfo=zoneinfo.ZoneInfo(key='UTC')), 60)
    """
    suffixes = (
        pl.concat([frame.get_column(c).str.slice(19) for c in _TIME_COLUMNS])
        .drop_nulls()
        .unique()
        .to_list()
    )
    shift_us = {suffix: _suffix_shift_us(suffix) for suffix in suffixes}
    shift_us = {k: v for k, v in shift_us.items() if v is not None}
    billsec = pl.col("billsec")
    return frame.with_columns(
        *[_instant(column, shift_us).alias(name) for column, name in _TIME_COLUMNS.items()],
        pl.when(billsec.str.contains(rf"^\d{{1,{_MAX_BILLSEC_DIGITS}}}$"))
        .then(billsec.cast(pl.Int64, strict=False))
        .alias("billsec_n"),
    )


def _instant(column: str, shift_us: dict[str, int]) -> pl.Expr:
    text = pl.col(column)
    wall_clock = text.str.slice(0, 19).str.to_datetime("%Y-%m-%dT%H:%M:%S", strict=False, cache=False)
    shift = text.str.slice(19).replace_strict(shift_us, default=None, return_dtype=pl.Int64)
    instant = (wall_clock + pl.duration(microseconds=shift)).dt.replace_time_zone("UTC")
    return pl.when(text.str.contains(_ISO_WITH_OFFSET)).then(instant)


def _suffix_shift_us(suffix: str) -> int | None:
    """Microseconds to add to the wall-clock time to get UTC, e.g. ``+08:00`` -> -8 h."""
    match = _SUFFIX.match(suffix)
    if match is None:
        return None
    fraction, zulu, sign, hours, minutes = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    if zulu:
        return micros
    if int(hours) > 23 or int(minutes) > 59:
        return None
    offset_us = (int(hours) * 3600 + int(minutes) * 60) * 1_000_000
    return micros - offset_us if sign == "+" else micros + offset_us


def answer_problem() -> pl.Expr:
    """Whether a row's only fault is its answering side (a switch format could not place
    the number the call was forwarded to): malformed, but judged after spec 4 step 2, so
    that a call to a number of no account is ``unknown_number`` first."""
    return pl.col("framing").str.starts_with(ANSWER_PROBLEM).fill_null(False)


def malformed_flag(*, before_account: bool = False) -> pl.Expr:
    """Whether a row is malformed (spec 4 step 1); in words of the spec.

    NUL bytes and bad UTF-8 are framing faults, found where the bytes are read
    (``schemas.cdr_csv``). Needs :func:`with_typed_fields` first. ``before_account``:
    only what is judged before the called number (all but :func:`answer_problem`).
    """
    answer_given = pl.col("answer_time").fill_null("") != ""
    framing = pl.col("framing").is_not_null()
    if before_account:
        framing = framing & ~answer_problem()
    return (
        framing
        | (pl.col("cdr_id").fill_null("") == "")
        | pl.col("start").is_null()
        | pl.col("end").is_null()
        | (answer_given & pl.col("answer").is_null())
        | pl.col("billsec_n").is_null()
        | ~pl.col("disposition").is_in(DISPOSITIONS).fill_null(False)
    )


def malformed_detail() -> pl.Expr:
    """Why a malformed row is malformed, in words; evaluate it on rejected rows only."""
    answer_text = pl.col("answer_time")
    return (
        pl.when(pl.col("framing").is_not_null() & ~answer_problem())
        .then(pl.col("framing"))
        .when(pl.col("cdr_id").fill_null("") == "")
        .then(pl.lit("cdr_id is empty"))
        .when(pl.col("start").is_null())
        .then(pl.format("start_time {} is not an ISO 8601 time with an offset", _quoted("start_time")))
        .when(pl.col("end").is_null())
        .then(pl.format("end_time {} is not an ISO 8601 time with an offset", _quoted("end_time")))
        .when(answer_text.fill_null("").ne("") & pl.col("answer").is_null())
        .then(pl.format("answer_time {} is not an ISO 8601 time with an offset", _quoted("answer_time")))
        .when(pl.col("billsec_n").is_null())
        .then(pl.format("billsec {} is not a non-negative whole number of seconds", _quoted("billsec")))
        .when(~pl.col("disposition").is_in(DISPOSITIONS).fill_null(False))
        .then(
            pl.format(
                "disposition {} is not one of {}", _quoted("disposition"), pl.lit(", ".join(DISPOSITIONS))
            )
        )
        .otherwise(pl.col("framing"))
    )


def _quoted(column: str) -> pl.Expr:
    return pl.concat_str([pl.lit("'"), pl.col(column).fill_null("").str.slice(0, 60), pl.lit("'")])
