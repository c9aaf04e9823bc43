"""The horizon (docs/rules.md, rating/horizon.py): late calls, duplicates within it, a bounded state.

The random-log property tests (tests/test_properties.py) hold the engine equal to the
plain reference for horizons of 0, 1 and 2 months and for any split into batches; these
are the rule's cases one by one, read like the rules.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rating import Catalog, RatingState, rate
from rating.horizon import DEFAULT_HORIZON_MONTHS
from schemas.cdr_csv import parse_csv
from schemas.columns import CDR_HEADER
from streams.settings import Settings
from tariffs import Account, Plan, Tariffs

PLAN = Plan.model_validate(
    {
        "id": "std",
        "timezone": "Asia/Shanghai",
        "versions": [
            {
                "effective_from": "2025-01-01T00:00:00+08:00",
                "included_minutes": 0,
                "rates": [{"segment": "*", "class": "local", "tiers": [{"per_minute": "0.10"}]}],
            }
        ],
    }
)
ACCOUNTS = (
    Account.model_validate({"id": "A", "plan": "std", "numbers": ["4008000001"], "opening_balance": "100.00"}),
    Account.model_validate({"id": "B", "plan": "std", "numbers": ["4008000002"], "opening_balance": "100.00"}),
)


def _call(cdr_id: str, answered_at: str, called: str = "4008000001") -> str:
    answer = datetime.fromisoformat(answered_at)
    return ",".join(
        [cdr_id, "sw1", "13800138000", called, "01088886666", "010", "010",
         (answer - timedelta(seconds=5)).isoformat(), answer.isoformat(),
         (answer + timedelta(seconds=60)).isoformat(), "60", "ANSWERED"]
    )


def _rate(lines: list[str], horizon: int = 1, cuts: tuple[int, ...] = ()) -> tuple[pl.DataFrame, pl.DataFrame, RatingState]:
    catalog = Catalog.from_tariffs(Tariffs(plans={"std": PLAN}, accounts=ACCOUNTS), horizon_months=horizon)
    batch = parse_csv(("\n".join([CDR_HEADER, *lines]) + "\n").encode())
    state = RatingState.empty()
    rated, rejected = [], []
    bounds = [0, *cuts, batch.height]
    for start, stop in zip(bounds, bounds[1:]):
        result = rate(batch[start:stop], state, catalog)
        rated.append(result.rated)
        rejected.append(result.rejected)
        state = result.state
    return pl.concat(rated), pl.concat(rejected), state


def _reasons(rejected: pl.DataFrame) -> dict[str, str]:
    return dict(rejected.select("cdr_id", "reason").iter_rows())


def test_a_call_of_the_month_before_the_latest_is_rated_and_one_older_is_late() -> None:
    rated, rejected, _ = _rate([
        _call("apr", "2026-04-03T10:00:00+08:00"),
        _call("mar", "2026-03-30T10:00:00+08:00"),
        _call("feb", "2026-02-27T10:00:00+08:00"),
    ])
    assert rated.get_column("cdr_id").to_list() == ["apr", "mar"]
    assert _reasons(rejected) == {"feb": "late"}


def test_the_month_boundary_is_the_plans_local_midnight() -> None:
    # The account's latest month is April (Shanghai): March is judged, February is late.
    rated, rejected, _ = _rate([
        _call("apr", "2026-04-01T00:00:00+08:00"),
        _call("last-feb-second", "2026-02-28T15:59:59+00:00"),  # 23:59:59 on Feb 28 in Shanghai
        _call("first-mar-second", "2026-02-28T16:00:00+00:00"),  # 00:00:00 on Mar 1 in Shanghai
    ])
    assert _reasons(rejected) == {"last-feb-second": "late"}
    assert "first-mar-second" in rated.get_column("cdr_id").to_list()


def test_the_late_detail_names_the_months_and_the_horizon() -> None:
    _, rejected, _ = _rate([_call("may", "2026-05-02T10:00:00+08:00"), _call("feb", "2026-02-10T10:00:00+08:00")])
    detail = rejected.filter(pl.col("cdr_id") == "feb").get_column("detail").item()
    assert "2026-02" in detail and "2026-05" in detail and "before 2026-04 are late" in detail
    assert "1 month(s)" in detail


def test_a_late_call_changes_nothing_and_is_not_remembered() -> None:
    _, rejected, state = _rate([
        _call("apr", "2026-04-03T10:00:00+08:00"),
        _call("old", "2026-01-05T10:00:00+08:00"),
        _call("old", "2026-04-05T10:00:00+08:00"),  # the id again, now in the horizon
    ])
    assert _reasons(rejected) == {"old": "late"}
    assert state.balances.filter(pl.col("account_id") == "A").get_column("balance").item() == 1_000_000 - 2 * 1000


def test_each_account_has_its_own_watermark() -> None:
    rated, rejected, _ = _rate([
        _call("a-jun", "2026-06-03T10:00:00+08:00"),
        _call("b-mar", "2026-03-03T10:00:00+08:00", called="4008000002"),
    ])
    assert rejected.height == 0 and rated.height == 2


def test_an_id_is_a_duplicate_within_the_horizon_and_rated_again_beyond_it() -> None:
    rated, rejected, _ = _rate([
        _call("x", "2026-01-10T10:00:00+08:00"),
        _call("x", "2026-02-10T10:00:00+08:00"),  # January still judged: a duplicate
        _call("y", "2026-03-10T10:00:00+08:00"),  # the watermark moves to March
        _call("x", "2026-03-11T10:00:00+08:00"),  # January is forgotten: rated again
    ])
    assert rejected.select("cdr_id", "reason").rows() == [("x", "duplicate")]
    assert rated.get_column("cdr_id").to_list() == ["x", "y", "x"]


def test_a_horizon_of_zero_rates_only_the_latest_month() -> None:
    _, rejected, _ = _rate(
        [_call("apr", "2026-04-03T10:00:00+08:00"), _call("mar", "2026-03-31T10:00:00+08:00")], horizon=0
    )
    assert _reasons(rejected) == {"mar": "late"}


def test_the_state_keeps_only_the_months_within_the_horizon() -> None:
    lines = [_call(f"c{month}", f"2026-{month:02d}-10T10:00:00+08:00") for month in range(1, 13)]
    _, _, state = _rate(lines, cuts=(3, 6, 9))
    months = {int(m) % 12 + 1 for m in state.seen.get_column("month_key").to_list()}
    assert months == {11, 12}
    assert {day.month for day in state.daily.get_column("local_day").to_list()} == {11, 12}
    assert state.latest.rows() == [("A", 2026 * 12 + 11)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    months=st.lists(st.integers(1, 6), min_size=1, max_size=25),
    ids=st.data(),
    horizon=st.integers(0, 2),
    cuts=st.lists(st.integers(0, 25), max_size=3),
)
def test_late_and_duplicates_do_not_depend_on_where_the_log_is_cut(
    months: list[int], ids: st.DataObject, horizon: int, cuts: list[int]
) -> None:
    # Calls spread over half a year in any order, with ids that repeat.
    names = ids.draw(st.lists(st.sampled_from("abcde"), min_size=len(months), max_size=len(months)))
    lines = [
        _call(name, f"2026-{month:02d}-{1 + i % 27:02d}T10:00:00+08:00", called=f"400800000{1 + i % 2}")
        for i, (name, month) in enumerate(zip(names, months))
    ]
    whole_rated, whole_rejected, whole_state = _rate(lines, horizon)
    split = tuple(sorted({min(c, len(lines)) for c in cuts}))
    rated, rejected, state = _rate(lines, horizon, split)
    assert rated.equals(whole_rated)
    assert rejected.equals(whole_rejected)
    assert state.latest.sort("account_id").equals(whole_state.latest.sort("account_id"))


def test_the_worker_setting_and_the_engine_share_the_default_horizon() -> None:
    assert Settings.model_fields["horizon_months"].default == DEFAULT_HORIZON_MONTHS
