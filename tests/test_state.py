"""The rating state survives being split per account into records and put back (the worker's path)."""

from __future__ import annotations

import polars as pl

from rating import Catalog, RatingState, rate
from schemas.cdr_csv import parse_csv
from tariffs import load_tariffs
from tests.conftest import PROJECT, VECTORS
from tests.records import via_records


def test_state_round_trips_through_records_per_account_and_rates_on_identically() -> None:
    vector = VECTORS / "mixed"
    catalog = Catalog.from_tariffs(load_tariffs(vector / "plans", vector / "accounts.toml"))
    batch = parse_csv((vector / "cdrs.csv").read_bytes())
    half = batch.height // 2
    first = rate(batch[:half], RatingState.empty(), catalog)
    restored = via_records(first.state)
    assert set(restored.account_ids().to_list()) == set(first.state.account_ids().to_list())
    for name in ("balances", "allowance", "charged", "daily", "seen", "latest"):
        keys = [c for c in getattr(first.state, name).columns if c not in ("balance", "allowance_used_s",
                "charged_before_s", "spent_before", "cap_alerted", "latest_month")]
        assert getattr(restored, name).sort(keys).equals(getattr(first.state, name).sort(keys)), name
    direct = rate(batch[half:], first.state, catalog)
    via_json = rate(batch[half:], restored, catalog)
    assert via_json.rated.equals(direct.rated)
    assert via_json.alerts.equals(direct.alerts)
    assert via_json.rejected.equals(direct.rejected)


def test_a_batch_sliced_from_a_bigger_one_rates_after_a_state() -> None:
    # Found by the split property test: polars panicked ("i < self.len()") in a string
    # function over a slice that shared its buffers with the rest of the file.
    data = PROJECT / "tests" / "data" / "sliced_batch"
    catalog = Catalog.from_tariffs(load_tariffs(data / "plans", data / "accounts.toml"))
    batch = parse_csv((data / "cdrs.csv").read_bytes())
    whole = rate(batch, RatingState.empty(), catalog)
    first = rate(batch[:6], RatingState.empty(), catalog)
    second = rate(batch[6:], first.state, catalog)
    assert pl.concat([first.rated, second.rated]).equals(whole.rated)
    assert pl.concat([first.rejected, second.rejected]).equals(whole.rejected)
