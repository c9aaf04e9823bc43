"""The lookups the engine keeps with a state (hashes of ``seen``, keyed daily totals).

They are derived data: a state whose tables were replaced, a state read back from JSON,
and a catalogue that no longer knows an account must all rate as the plain tables say.
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from rating import Catalog, RatingState, rate
from schemas.cdr_csv import parse_csv
from tariffs import load_tariffs
from tests.conftest import VECTORS
from tests.records import via_records

MIXED = VECTORS / "mixed"


def _mixed() -> tuple[pl.DataFrame, Catalog]:
    tariffs = load_tariffs(MIXED / "plans", MIXED / "accounts.toml")
    return parse_csv((MIXED / "cdrs.csv").read_bytes()), Catalog.from_tariffs(tariffs)


def _resent_ids(batch: pl.DataFrame, first: RatingState) -> pl.DataFrame:
    return batch.join(first.seen, on="cdr_id", how="semi").select("cdr_id").unique()


def _resend_rows(batch: pl.DataFrame) -> list[int]:
    """Rows that repeat an earlier row's cdr_id: a cut there puts the two in two batches."""
    rows = batch.with_row_index("row").filter(~pl.col("cdr_id").is_first_distinct())
    return rows.get_column("row").cast(pl.Int64).to_list()


def test_resends_in_later_batches_are_duplicates_through_the_kept_hashes() -> None:
    batch, catalog = _mixed()
    resends = _resend_rows(batch)
    assert len(resends) >= 6
    cuts = [0, *resends[::5], batch.height]
    state = RatingState.empty()
    duplicates = []
    for start, stop in zip(cuts, cuts[1:], strict=False):
        result = rate(batch[start:stop], state, catalog)
        state = result.state
        duplicates.append(result.rejected.filter(pl.col("reason") == "duplicate"))
    whole = rate(batch, RatingState.empty(), catalog).rejected.filter(pl.col("reason") == "duplicate")
    chunked = pl.concat(duplicates)
    assert chunked.height > 0
    assert chunked.sort("line").equals(whole.sort("line"))


def test_a_state_whose_seen_table_was_replaced_is_not_judged_by_the_old_hashes() -> None:
    batch, catalog = _mixed()
    half = _resend_rows(batch)[3]
    first = rate(batch[:half], RatingState.empty(), catalog).state
    later = batch[half:]
    assert _resent_ids(later, first).height > 0, "the vector set must resend ids across the cut"
    # Same balances and totals, but the ids of the first half forgotten: a new seen frame.
    forgetful = replace(first, seen=first.seen.clear())
    from_json = via_records(replace(first, seen=first.seen.clear()))
    forgetting = rate(later, forgetful, catalog)
    expected = rate(later, from_json, catalog)
    assert forgetting.rejected.equals(expected.rejected)
    assert forgetting.rated.equals(expected.rated)
    remembering = rate(later, first, catalog)
    assert remembering.rejected.filter(pl.col("reason") == "duplicate").height > (
        forgetting.rejected.filter(pl.col("reason") == "duplicate").height
    )


def test_daily_totals_of_an_account_the_catalogue_no_longer_knows_are_kept() -> None:
    batch, catalog = _mixed()
    half = batch.height // 2
    first = rate(batch[:half], RatingState.empty(), catalog).state
    gone = "A001"
    assert first.daily.filter(pl.col("account_id") == gone).height > 0
    tariffs = load_tariffs(MIXED / "plans", MIXED / "accounts.toml")
    smaller = Catalog.from_tariffs(replace(tariffs, accounts=tuple(a for a in tariffs.accounts if a.id != gone)))
    after = rate(batch[half:], first, smaller).state
    kept = after.daily.filter(pl.col("account_id") == gone).sort("local_day")
    assert kept.equals(first.daily.filter(pl.col("account_id") == gone).sort("local_day"))
    # The other accounts' totals are those of the full catalogue.
    full = rate(batch[half:], first, catalog).state
    others = after.daily.filter(pl.col("account_id") != gone).sort("account_id", "local_day")
    assert others.equals(full.daily.filter(pl.col("account_id") != gone).sort("account_id", "local_day"))
    # ... and a chained run reads its daily totals back exactly as a fresh state would.
    fresh = via_records(after)
    tail = batch[half + 200 :]
    assert rate(tail, after, smaller).rated.equals(rate(tail, fresh, smaller).rated)
