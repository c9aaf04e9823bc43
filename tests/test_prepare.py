"""``rating.prepare``: the state-free part of rating, done ahead, changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from rating import Catalog, RatingState, prepare, rate
from schemas.cdr_csv import parse_csv
from tariffs import load_tariffs
from tests.conftest import VECTORS


def test_a_batch_prepared_ahead_rates_as_the_raw_batch_after_a_state(vector_set: Path) -> None:
    catalog = Catalog.from_tariffs(load_tariffs(vector_set / "plans", vector_set / "accounts.toml"))
    batch = parse_csv((vector_set / "cdrs.csv").read_bytes())
    half = batch.height // 2
    # The second half is prepared before the state it is rated with exists.
    ahead = prepare(batch[half:], catalog)
    first = rate(batch[:half], RatingState.empty(), catalog)
    raw = rate(batch[half:], first.state, catalog)
    prepared = rate(ahead, first.state, catalog)
    assert prepared.rated.height > 0
    assert prepared.rated.equals(raw.rated)
    assert prepared.rejected.equals(raw.rejected)
    assert prepared.alerts.equals(raw.alerts)
    assert prepared.state.balances.equals(raw.state.balances)
    assert prepared.state.seen.equals(raw.state.seen)


def test_a_batch_prepared_with_another_catalogue_is_refused() -> None:
    vector = VECTORS / "basic"
    tariffs = load_tariffs(vector / "plans", vector / "accounts.toml")
    batch = parse_csv((vector / "cdrs.csv").read_bytes())
    prepared = prepare(batch, Catalog.from_tariffs(tariffs))
    with pytest.raises(ValueError, match="another catalogue"):
        rate(prepared, RatingState.empty(), Catalog.from_tariffs(tariffs))
