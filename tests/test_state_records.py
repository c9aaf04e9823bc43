"""The worker's state as records (streams.worker.state_records): bounded values, commits, segments."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Any

import orjson
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rating import Catalog, RatingState, rate
from rating.clock import month_key
from rating.state import ALLOWANCE_SCHEMA, CHARGED_SCHEMA, DAILY_SCHEMA
from schemas.cdr_csv import parse_csv
from streams.offline.generate import generate_dataset
from streams.worker.batch import rate_messages
from streams.worker.state_records import (
    CORE,
    SEGMENT_FANOUT,
    SEGMENT_MAX_BYTES,
    Core,
    RecordFold,
    core_of,
    month_values,
    parse_segment_name,
    plan_segments,
    record_key,
    tagged,
)
from tariffs import load_tariffs
from tests.conftest import VECTORS
from tests.records import via_records
from tests.test_rating_batch import _messages

TOPIC = "cdr.raw"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(st.text(min_size=1, max_size=40), max_size=400), min_size=1, max_size=40))
def test_segments_keep_every_id_once_and_stay_few_and_bounded(batches: list[list[str]]) -> None:
    segments: dict[int, list[str]] = {}
    written = 0
    added: list[str] = []
    for ids in batches:
        plan = plan_segments({n: len(_json(s)) for n, s in segments.items()}, ids, lambda n: segments[n])
        for number in plan.deleted:
            del segments[number]
        segments.update(plan.written)
        written += sum(len(chunk) for chunk in plan.written.values())
        added += ids
    assert sorted(i for s in segments.values() for i in s) == sorted(added)
    assert all(len(_json(s)) <= SEGMENT_MAX_BYTES for s in segments.values())
    # Few segments that are not full: fewer than FANOUT per size tier (5 tiers).
    small = [s for s in segments.values() if len(_json(s)) < SEGMENT_MAX_BYTES // 2]
    assert len(small) < SEGMENT_FANOUT * 5
    # Each id is written a handful of times at most (once, then once per tier it climbs).
    assert written <= 6 * max(len(added), 1)


def _json(ids: list[str]) -> bytes:
    import orjson

    return orjson.dumps(ids)


def test_parts_wait_for_the_core_that_commits_them() -> None:
    fold = RecordFold()
    fold.apply(record_key(b"A", b"m1"), tagged(5, b'{"allowance": 1}'))
    fold.apply(b"A", Core(applied_offset=5, parts=[b"m1"]).encode())
    # A later batch wrote its month record, then the worker died before the core.
    fold.apply(record_key(b"A", b"m1"), tagged(9, b'{"allowance": 2}'))
    assert fold.accounts[b"A"][b"m1"].value == tagged(5, b'{"allowance": 1}')
    # The next core (the batch re-rated, committing offset 12) drops the stale part.
    fold.apply(b"A", Core(applied_offset=12, parts=[b"m1"]).encode())
    assert fold.accounts[b"A"][b"m1"].value == tagged(5, b'{"allowance": 1}')


def test_a_core_drops_the_parts_it_no_longer_lists() -> None:
    fold = RecordFold()
    fold.apply(record_key(b"A", b"s1.0"), tagged(1, b'["x"]'))
    fold.apply(b"A", Core(applied_offset=1, parts=[b"s1.0"]).encode())
    fold.apply(b"A", Core(applied_offset=2, parts=[]).encode())
    assert set(fold.accounts[b"A"]) == {CORE}


def test_a_snapshot_reads_back_to_the_same_state() -> None:
    catalog, batch, owner = _vector("mixed")
    table = RecordFold()
    _write(table, rate_messages(_messages(batch, owner, chunk_lines=50), {}, catalog, TOPIC))
    copy = RecordFold()
    for key, value in table.records():
        copy.apply(key, value)
    assert {a: {n: r.value for n, r in recs.items() if n} for a, recs in copy.accounts.items()} == {
        a: {n: r.value for n, r in recs.items() if n} for a, recs in table.accounts.items()
    }
    assert {a: core_of(r).balance for a, r in copy.accounts.items()} == {
        a: core_of(r).balance for a, r in table.accounts.items()
    }


def test_a_hot_account_of_a_month_has_no_value_near_the_message_limit(tmp_path) -> None:
    # 60k calls of one account in a month, rated in batches as the worker does: every
    # record stays under 64 kB and a batch writes about what it added, not the history.
    data = generate_dataset(tmp_path, cdrs=60_000, accounts=1, month="2026-03", seed=3)
    catalog = Catalog.from_tariffs(load_tariffs(data.plans_dir, data.accounts_file))
    batch = parse_csv(data.cdrs_file.read_bytes())
    owner = load_tariffs(data.plans_dir, data.accounts_file).account_of_number()
    messages = _messages(batch, owner, chunk_lines=500, partitions=1)
    table = RecordFold()
    written = []
    for start in range(0, len(messages), 10):  # 5,000 lines a batch
        chunk = messages[start : start + 10]
        outcome = rate_messages(chunk, {m.key: table.accounts.get(m.key) for m in chunk}, catalog, TOPIC)
        records = [r for _, (_, rs) in outcome.states.items() for r in rs]
        written.append(sum(len(k) + len(v) for k, v in records))
        for key, value in records:
            table.apply(key, value)
    account = max(table.accounts, key=lambda a: len(table.accounts[a]))  # not the unknown numbers' keys
    values = table.accounts[account]
    assert max(len(r) for r in values.values()) < 64 * 1024
    segments = [n for n in values if parse_segment_name(n) is not None]
    assert 10 <= len(segments) <= 60
    # Per batch: ~5,000 new ids of ~24 bytes, plus merges now and then; never the month.
    assert max(written) < 8 * 5_000 * 24
    assert sum(written[-5:]) < 3 * sum(written[:5])
    # ... and the records rate on exactly as the whole file does.
    whole = rate(batch, RatingState.empty(), catalog)
    assert core_of(values).balance == whole.state.balances.get_column("balance").item()


def _vector(name: str):  # type: ignore[no-untyped-def]
    vectors = VECTORS / name
    tariffs = load_tariffs(vectors / "plans", vectors / "accounts.toml")
    return Catalog.from_tariffs(tariffs), parse_csv((vectors / "cdrs.csv").read_bytes()), tariffs.account_of_number()


def _write(table: RecordFold, outcome) -> None:  # type: ignore[no-untyped-def]
    for _, (_, records) in outcome.states.items():
        for key, value in records:
            table.apply(key, value)


def test_source_message_keys_name_the_state_they_advance() -> None:
    catalog, batch, owner = _vector("basic")
    messages = _messages(batch, owner, chunk_lines=500)
    outcome = rate_messages(messages, {}, catalog, TOPIC)
    for key, (partition, records) in outcome.states.items():
        assert records[-1][0] == key  # the core last: it commits the rest
        assert all(k.startswith(key + b"\x00") for k, _ in records[:-1])
        assert partition == next(m.partition for m in messages if m.key == key)


def _month_values_one_by_one(state: RatingState, wanted: pl.DataFrame) -> dict[tuple[str, int], bytes]:
    """month_values as it was first written: a dict per month filled row by row, dumped
    with sorted keys (the reference for the vectorized one)."""
    parts: dict[tuple[str, int], dict[str, Any]] = {}

    def part(account: str, month: int) -> dict[str, Any]:
        return parts.setdefault((account, month), {"allowance": 0, "charged": {}, "daily": {}})

    keys = ["account_id", "month_key"]
    for account, month, used in state.allowance.join(wanted, on=keys, how="semi").iter_rows():
        part(account, month)["allowance"] = used
    for account, month, call_class, seconds in state.charged.join(wanted, on=keys, how="semi").iter_rows():
        part(account, month)["charged"][call_class] = seconds
    days = state.daily.with_columns(month_key=month_key(pl.col("local_day"))).join(wanted, on=keys, how="semi")
    for account, day, spent, alerted, month in days.iter_rows():
        part(account, month)["daily"][day.isoformat()] = [spent, alerted]
    return {key: orjson.dumps(value, option=orjson.OPT_SORT_KEYS) for key, value in parts.items()}


_ACCOUNTS = st.sampled_from(["A001", "A002", "B\u00e9", 'q"uote'])
_MONTHS = st.sampled_from([24314, 24315, 24316])  # 2026-03 .. 2026-05
_DAYS = st.dates(date(2026, 2, 25), date(2026, 6, 3))
_AMOUNTS = st.one_of(st.none(), st.integers(-(2**40), 2**40))


@settings(max_examples=150, deadline=None)
@given(
    allowance=st.lists(st.tuples(_ACCOUNTS, _MONTHS, _AMOUNTS), max_size=6),
    charged=st.lists(st.tuples(_ACCOUNTS, _MONTHS, st.sampled_from(["local", "long_distance", "x\"y"]), _AMOUNTS), max_size=10),
    daily=st.lists(st.tuples(_ACCOUNTS, _DAYS, _AMOUNTS, st.one_of(st.none(), st.booleans())), max_size=60),
    wanted=st.lists(st.tuples(_ACCOUNTS, _MONTHS), max_size=8, unique=True),
)
def test_month_values_are_the_bytes_of_the_month_dumped_with_sorted_keys(
    allowance: list[Any], charged: list[Any], daily: list[Any], wanted: list[Any]
) -> None:
    state = replace(
        RatingState.empty(),
        allowance=pl.DataFrame(allowance, schema=ALLOWANCE_SCHEMA, orient="row"),
        charged=pl.DataFrame(charged, schema=CHARGED_SCHEMA, orient="row"),
        daily=pl.DataFrame(daily, schema=DAILY_SCHEMA, orient="row"),
    )
    frame = pl.DataFrame(wanted, schema={"account_id": pl.String, "month_key": pl.Int64}, orient="row")
    assert month_values(state, frame) == _month_values_one_by_one(state, frame)


@settings(max_examples=60, deadline=None)
@given(
    daily=st.lists(st.tuples(_ACCOUNTS, _DAYS, st.integers(0, 2**40), st.booleans()), max_size=60, unique_by=lambda r: r[:2]),
    charged=st.lists(
        st.tuples(_ACCOUNTS, _MONTHS, st.sampled_from(["local", "long_distance"]), st.integers(0, 10**7)),
        max_size=10, unique_by=lambda r: r[:3],
    ),
)
def test_a_state_through_month_records_reads_back_the_same(daily: list[Any], charged: list[Any]) -> None:
    state = replace(
        RatingState.empty(),
        charged=pl.DataFrame(charged, schema=CHARGED_SCHEMA, orient="row"),
        daily=pl.DataFrame(daily, schema=DAILY_SCHEMA, orient="row"),
    )
    back = via_records(state)
    for name in ("charged", "daily"):
        columns = getattr(state, name).columns
        assert getattr(back, name).select(columns).sort(columns).equals(getattr(state, name).sort(columns)), name


def test_a_batch_rated_on_the_state_the_one_before_will_leave_is_rated_as_after_its_write() -> None:
    # The worker rates a batch while the one before is written (streams.worker.runner):
    # on RecordFold.after, the state that write will leave, not on the fold itself.
    catalog, batch, owner = _vector("mixed")
    messages = _messages(batch, owner, chunk_lines=3)
    first, second = messages[: len(messages) // 2], messages[len(messages) // 2 :]
    written = RecordFold()
    before = rate_messages(first, {}, catalog, TOPIC)
    _write(written, before)
    after_write = rate_messages(second, {m.key: written.accounts.get(m.key) for m in second}, catalog, TOPIC)

    pending = RecordFold()  # the first batch not folded in yet
    ahead = {m.key: pending.after(m.key, before.states[m.key][1]) if m.key in before.states else None for m in second}
    assert any(records is not None for records in ahead.values())
    on_projection = rate_messages(second, ahead, catalog, TOPIC)
    assert on_projection.outputs == after_write.outputs
    assert on_projection.states == after_write.states
    # Writes folded in already change nothing when folded again (the write may land first).
    for key, (_, records) in before.states.items():
        again = written.after(key, records)
        assert again is not None
        assert {n: r.value for n, r in again.items()} == {n: r.value for n, r in written.accounts[key].items()}
