"""How the ClickHouse sink turns rating frames into insert columns (no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rating import Catalog, RatingResult, RatingState, rate
from schemas.cdr_csv import parse_csv
from schemas.columns import RATED_FINANCE_COLUMNS
from streams.clickhouse.insert import table_columns
from streams.clickhouse.tables import ALERTS, RATED, REJECTED
from streams.clickhouse.wire import EncodedStrings
from tariffs import load_tariffs
from tests.conftest import VECTORS


def _values(array: np.ndarray) -> list[object]:
    """A column's values as the server gets them (strings are sent as encoded bytes)."""
    return array.values() if isinstance(array, EncodedStrings) else list(array)


@pytest.fixture(scope="module")
def result() -> RatingResult:
    vectors = VECTORS / "mixed"
    catalog = Catalog.from_tariffs(load_tariffs(vectors / "plans", vectors / "accounts.toml"))
    return rate(parse_csv(Path(vectors / "cdrs.csv").read_bytes()), RatingState.empty(), catalog)


def test_the_tables_take_the_frames_the_engine_gives(result: RatingResult) -> None:
    # The finance columns and caller_origin are optional in the table (frames from older
    # workers lack them).
    finance = {name: RATED.optional[name] for name in RATED_FINANCE_COLUMNS}
    # So are the credit columns (issue 23) and how the caller was placed (issue 21).
    extra = {name: RATED.optional[name] for name in ("credit_used", "credit", "caller_origin")}
    assert dict(pl.Schema({**RATED.schema, **finance, **extra})) == dict(result.rated.schema)
    assert REJECTED.schema == result.rejected.schema
    assert ALERTS.schema == result.alerts.schema


def test_a_missing_column_is_named(result: RatingResult) -> None:
    with pytest.raises(ValueError, match="rated_calls: the frame lacks the column.s. amount"):
        table_columns(RATED, result.rated.drop("amount"))


def test_a_null_where_the_table_has_none_is_refused(result: RatingResult) -> None:
    frame = result.rated.with_columns(amount=pl.lit(None, dtype=pl.Int64))
    with pytest.raises(ValueError, match="null values in amount"):
        table_columns(RATED, frame)


def test_the_value_that_stands_for_null_cannot_be_stored_as_a_value(result: RatingResult) -> None:
    frame = result.rated.with_columns(rate_segment=pl.lit(""))
    with pytest.raises(ValueError, match="rate_segment=''"):
        table_columns(RATED, frame)


def test_nulls_become_their_stand_in_values_and_daily_cap_stays_null(result: RatingResult) -> None:
    unbilled = result.rated.filter(pl.col("status") == "unbilled", pl.col("daily_cap").is_null()).head(1)
    names, arrays = table_columns(RATED, unbilled)
    row = dict(zip(names, (_values(array)[0] for array in arrays), strict=True))
    assert (row["plan_version"], row["rate_segment"], row["tier_first"], row["tier_last"]) == (b"", b"", 0, 0)
    assert row["daily_cap"] is None


def test_charge_time_is_sent_as_seconds_and_microseconds(result: RatingResult) -> None:
    instant = datetime(2026, 3, 2, 1, 16, 0, 500_001, tzinfo=UTC)
    frame = result.rated.head(1).with_columns(charge_time=pl.lit(instant).dt.cast_time_unit("us"))
    names, arrays = table_columns(RATED, frame)
    columns = dict(zip(names, arrays, strict=True))
    assert (int(columns["charge_time"][0]), int(columns["charge_us"][0])) == (
        int(instant.timestamp()),
        500_001,
    )


def test_origin_columns_are_sent_only_when_the_frame_has_them(result: RatingResult) -> None:
    names, _ = table_columns(REJECTED, result.rejected)
    assert names == list(REJECTED.schema)
    names, arrays = table_columns(REJECTED, result.rejected.with_columns(source=pl.lit(None, dtype=pl.String)))
    assert names[-1] == "source" and set(_values(arrays[-1])) == {b""}
