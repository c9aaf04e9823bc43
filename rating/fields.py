"""Spec 4 step 1: which raw fields make a CDR malformed, and their typed values."""

from __future__ import annotations

import polars as pl

from schemas.columns import CDR_COLUMNS, DISPOSITIONS

# ISO 8601 with an offset: 2026-03-02T09:15:00+08:00, ...Z, ...+0800, optional fraction.
_ISO_WITH_OFFSET = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%#z"
_MAX_BILLSEC_DIGITS = 9  # 31 years of talk: anything longer is not a call


def _instant(column: str) -> pl.Expr:
    text = pl.col(column)
    parsed = text.str.to_datetime(_TIME_FORMAT, strict=False, time_zone="UTC", time_unit="us")
    return pl.when(text.str.contains(_ISO_WITH_OFFSET)).then(parsed)


def typed_fields() -> list[pl.Expr]:
    """Typed columns: ``start``, ``answer``, ``end`` (UTC instants), ``billsec_n``."""
    billsec = pl.col("billsec")
    return [
        _instant("start_time").alias("start"),
        _instant("answer_time").alias("answer"),
        _instant("end_time").alias("end"),
        pl.when(billsec.str.contains(rf"^\d{{1,{_MAX_BILLSEC_DIGITS}}}$"))
        .then(billsec.cast(pl.Int64, strict=False))
        .alias("billsec_n"),
    ]


def malformed_detail() -> pl.Expr:
    """Why a row is malformed (spec 4 step 1), or null; needs :func:`typed_fields` first."""
    text_fields = [pl.col(c) for c in CDR_COLUMNS]
    has_bad_char = pl.any_horizontal(
        c.str.contains("\x00", literal=True) | c.str.contains("\ufffd", literal=True) for c in text_fields
    )
    answer_text = pl.col("answer_time")
    return (
        pl.when(pl.col("framing").is_not_null())
        .then(pl.col("framing"))
        .when(has_bad_char)
        .then(pl.lit("a field holds a NUL byte or bytes that are not UTF-8"))
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
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def _quoted(column: str) -> pl.Expr:
    return pl.concat_str([pl.lit("'"), pl.col(column).fill_null("").str.slice(0, 60), pl.lit("'")])
