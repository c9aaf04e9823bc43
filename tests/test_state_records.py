"""The worker's state as records (streams.state_records): bounded values, commits, segments."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rating import Catalog, RatingState, rate
from schemas.cdr_csv import parse_csv
from streams.generate import generate_dataset
from streams.rating_batch import rate_messages
from streams.state_records import (
    CORE,
    SEGMENT_FANOUT,
    SEGMENT_MAX_BYTES,
    Core,
    RecordFold,
    core_of,
    parse_segment_name,
    plan_segments,
    record_key,
    tagged,
)
from tariffs import load_tariffs
from tests.conftest import VECTORS
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
