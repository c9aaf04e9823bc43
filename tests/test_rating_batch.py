"""The rating agent's batch step (streams.worker.batch), without Kafka: replays, garbage, keys."""

from __future__ import annotations

import io
import json

import polars as pl
import pytest

from rating import Catalog, RatingState, rate
from schemas.cdr_csv import parse_csv
from schemas.messages import ARROW_STREAM_MARK, cdr_chunk_value
from streams.worker.batch import BatchOutcome, rate_messages
from streams.worker.messages import OUTPUT_ROWS, SourceMessage
from streams.worker.sinks import OUTPUT_SCHEMAS, read_output
from streams.worker.state_records import RecordFold, core_of
from tariffs import load_tariffs
from tests.conftest import VECTORS

TOPIC = "cdr.raw"


def _vector(name: str) -> tuple[Catalog, pl.DataFrame, dict[str, str]]:
    vectors = VECTORS / name
    tariffs = load_tariffs(vectors / "plans", vectors / "accounts.toml")
    return Catalog.from_tariffs(tariffs), parse_csv((vectors / "cdrs.csv").read_bytes()), tariffs.account_of_number()


def _messages(batch: pl.DataFrame, owner: dict[str, str], chunk_lines: int, partitions: int = 3) -> list[SourceMessage]:
    """Every line as chunks keyed by account, each account on one partition, offsets in order."""
    keyed = batch.with_columns(
        _key=pl.col("called").replace_strict(owner, default=None, return_dtype=pl.String).fill_null(
            pl.col("called").fill_null("")
        )
    )
    next_offset = [0] * partitions
    messages = []
    for (key,), lines in keyed.partition_by("_key", maintain_order=True, as_dict=True).items():
        partition = sum(key.encode()) % partitions
        for start in range(0, lines.height, chunk_lines):
            value = json.dumps(cdr_chunk_value("cdrs.csv", lines.slice(start, chunk_lines), "i1")).encode()
            messages.append(SourceMessage(key.encode(), partition, next_offset[partition], value))
            next_offset[partition] += 1
    return messages


def _run_batches(messages: list[SourceMessage], catalog: Catalog, batch_size: int, table: RecordFold) -> list[BatchOutcome]:
    """Batches rated one after the other, each one's records written to ``table`` (the
    worker's store of them) as the worker writes them."""
    outcomes = []
    for start in range(0, len(messages), batch_size):
        batch = messages[start : start + batch_size]
        outcome = rate_messages(batch, {m.key: table.accounts.get(m.key) for m in batch}, catalog, TOPIC)
        _write(table, outcome)
        outcomes.append(outcome)
    return outcomes


def _write(table: RecordFold, outcome: BatchOutcome) -> None:
    for _, (_, records) in outcome.states.items():
        for key, value in records:
            table.apply(key, value)


def _copy(table: RecordFold) -> RecordFold:
    copy = RecordFold()
    for key, value in table.records():
        copy.apply(key, value)
    return copy


def _outputs(outcomes: list[BatchOutcome], kind: str) -> pl.DataFrame:
    frames = [
        read_output(m.value, kind)
        for outcome in outcomes
        for m in outcome.outputs
        if m.kind == kind
    ]
    return pl.concat(frames).sort("account_id", "offset", "line") if frames else pl.DataFrame()


@pytest.mark.parametrize("chunk_lines, batch_size", [(500, 1000), (7, 5), (1, 97)])
def test_any_split_into_messages_and_batches_rates_as_the_whole_file(chunk_lines: int, batch_size: int) -> None:
    catalog, batch, owner = _vector("mixed")
    whole = rate(batch, RatingState.empty(), catalog)
    outcomes = _run_batches(_messages(batch, owner, chunk_lines), catalog, batch_size, RecordFold())
    rated = _outputs(outcomes, "rated")
    columns = [c for c in whole.rated.columns if c not in ("source", "ingest_id")]
    expected = whole.rated.select(columns).sort("account_id", "line")
    assert rated.select(columns).sort("account_id", "line").equals(expected)
    assert sorted(_outputs(outcomes, "rejected")["line"].to_list()) == sorted(whole.rejected["line"].to_list())
    assert _outputs(outcomes, "alerts").height == whole.alerts.height


def test_messages_the_states_already_hold_are_skipped_and_send_nothing() -> None:
    catalog, batch, owner = _vector("basic")
    messages = _messages(batch, owner, chunk_lines=3)
    table = RecordFold()
    _run_batches(messages, catalog, 4, table)
    again = rate_messages(messages, dict(table.accounts), catalog, TOPIC)
    assert again.skipped == len(messages) and again.outputs == [] and again.lines == 0


def test_a_replay_from_an_older_state_gives_the_same_outputs_again() -> None:
    catalog, batch, owner = _vector("basic")
    messages = _messages(batch, owner, chunk_lines=2)
    half = len(messages) // 2
    table = RecordFold()
    _run_batches(messages[:half], catalog, 3, table)
    before = _copy(table)
    first = _run_batches(messages[half:], catalog, 5, table)
    # The states after the first half come back (a lost changelog tail): replay it all.
    replayed = _run_batches(messages, catalog, 50, before)
    assert sum(o.skipped for o in replayed) == half
    for kind in ("rated", "rejected", "alerts"):
        assert _outputs(replayed, kind).equals(_outputs(first, kind))


def test_a_message_that_is_no_cdr_chunk_becomes_a_malformed_rejection_at_its_position() -> None:
    catalog, batch, owner = _vector("basic")
    good = _messages(batch, owner, chunk_lines=500)[0]
    garbage = [
        SourceMessage(b"A001", good.partition, 100, b"\xff not json"),
        SourceMessage(b"A001", good.partition, 101, b'{"v": 1, "line": "x"}'),
        SourceMessage(b"", 2, 7, None),
    ]
    outcome = rate_messages([*garbage, SourceMessage(good.key, good.partition, 102, good.value)], {}, catalog, TOPIC)
    assert outcome.garbage == 3
    rejected = _outputs([outcome], "rejected").filter(pl.col("line") == 0).sort("offset")
    assert rejected["reason"].to_list() == ["malformed"] * 3
    assert rejected["source"].to_list() == ["cdr.raw[2]@7", f"cdr.raw[{good.partition}]@100", f"cdr.raw[{good.partition}]@101"]
    assert _outputs([outcome], "rated").height > 0  # the good message after them is rated
    table = RecordFold()
    _write(table, outcome)
    assert core_of(table.accounts[b"A001"]).applied_offset == 102


def test_checkpoints_name_the_offset_after_each_partitions_last_message() -> None:
    catalog, batch, owner = _vector("basic")
    messages = _messages(batch, owner, chunk_lines=1)
    outcome = rate_messages(messages, {}, catalog, TOPIC)
    for partition in {m.partition for m in messages}:
        assert outcome.checkpoints[partition] == max(m.offset for m in messages if m.partition == partition) + 1


@pytest.mark.parametrize("chunk_lines", [3000, 1])
def test_outputs_are_grouped_by_source_partition_and_cut_into_bounded_messages(chunk_lines: int) -> None:
    catalog, batch, owner = _vector("mixed")
    messages = _messages(batch, owner, chunk_lines=chunk_lines)
    partition_of = {m.key: m.partition for m in messages}
    outcome = rate_messages(messages, {}, catalog, TOPIC)
    grouped = 0
    for message in outcome.outputs:
        if message.kind == "status":
            continue
        rows = read_output(message.value, message.kind)
        assert rows.height <= OUTPUT_ROWS
        assert message.key == f"{TOPIC}[{message.partition}]".encode()
        assert {partition_of[a] for a in message.accounts} == {message.partition}
        if message.kind != "rejected":  # a rejection may name no account
            assert rows["account_id"].unique().sort().to_list() == sorted(a.decode() for a in message.accounts)
            # Each account's rows together.
            runs = rows.select(pl.col("account_id").rle_id()).to_series()
            assert runs.n_unique() == rows["account_id"].n_unique()
        if len(message.accounts) > 1:
            grouped += 1
            assert message.account == b"" and message.split is not None
            alone = message.split()
            assert [m.account for m in alone] == list(message.accounts)
            assert all(m.partition == message.partition and m.key == m.account for m in alone)
            assert pl.concat([read_output(m.value, m.kind) for m in alone]).equals(rows)
        else:
            assert message.account == message.accounts[0]
    assert grouped
    # One message per kind and partition, cut only every OUTPUT_ROWS rows (these rows are
    # far under the byte limit): not one per account.
    counts: dict[tuple[str, int], list[int]] = {}
    for message in outcome.outputs:
        if message.kind != "status":
            counts.setdefault((message.kind, message.partition), []).append(read_output(message.value, message.kind).height)
    for heights in counts.values():
        assert len(heights) == -(-sum(heights) // OUTPUT_ROWS)


def test_output_schemas_read_back_every_column_the_engine_gives() -> None:
    catalog, batch, owner = _vector("basic")
    outcome = rate_messages(_messages(batch, owner, chunk_lines=500), {}, catalog, TOPIC)
    assert {message.kind for message in outcome.outputs} >= {"rated", "rejected", "balances"}
    for message in outcome.outputs:
        # The rows travel as Arrow IPC (schemas.messages.frame_bytes), with their types.
        assert message.value.startswith(ARROW_STREAM_MARK), message.kind
        sent = pl.read_ipc_stream(io.BytesIO(message.value)).schema
        schema = OUTPUT_SCHEMAS[message.kind]
        assert set(sent) <= set(schema), set(sent) - set(schema)
        assert {name: dtype for name, dtype in sent.items() if dtype != schema[name]} == {}, message.kind




def test_an_account_whose_rating_fails_is_set_apart_and_the_others_are_rated(monkeypatch) -> None:
    catalog, batch, owner = _vector("mixed")
    messages = _messages(batch, owner, chunk_lines=50)
    whole = rate_messages(messages, {}, catalog, TOPIC)
    import streams.worker.batch as rating_batch

    real_rate = rating_batch.rate

    def failing(lines, state, catalog):  # type: ignore[no-untyped-def]
        if lines.get_column("called").is_in(_numbers_of("A003", owner)).any():
            raise RuntimeError("a rule no test foresaw")
        return real_rate(lines, state, catalog)

    monkeypatch.setattr(rating_batch, "rate", failing)
    outcome, failed = rating_batch.rate_isolated(messages, {}, catalog, TOPIC)
    assert list(failed) == [b"A003"] and "a rule no test foresaw" in failed[b"A003"]
    assert b"A003" not in outcome.states and all(b"A003" not in m.accounts for m in outcome.outputs)
    # Every other account: the same records and output rows as when nothing failed.
    assert {k: v for k, v in whole.states.items() if k != b"A003"} == outcome.states
    for kind in ("rated", "rejected", "alerts"):
        expected = _outputs([whole], kind).filter(pl.col("account_id").fill_null("") != "A003")
        assert _outputs([outcome], kind).equals(expected), kind
    balances = [read_output(m.value, "balances") for m in outcome.outputs if m.kind == "balances"]
    expected = [read_output(m.value, "balances") for m in whole.outputs if m.kind == "balances"]
    assert pl.concat(balances).sort("account_id").equals(
        pl.concat(expected).filter(pl.col("account_id") != "A003").sort("account_id")
    )
    assert outcome.checkpoints == whole.checkpoints


def _numbers_of(account: str, owner: dict[str, str]) -> list[str]:
    return [number for number, owner_id in owner.items() if owner_id == account]


def test_a_batch_whose_state_is_not_written_leaves_the_stored_ledger_book_as_it_was() -> None:
    # The fold works on a copy of the book: a batch rated again (its state was not
    # written: a crash, a refused write) finds the book as it was and records the same.
    from datetime import datetime, timezone

    from schemas.ledger import LedgerCommand

    catalog, _, _ = _vector("basic")
    opened = LedgerCommand(kind="open", account_id="A001", at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                           plan="std-100", numbers=["4008001234"], opening_balance=5_000_000, imported=True)
    topup = LedgerCommand(kind="topup", account_id="A001", at=datetime(2026, 3, 1, tzinfo=timezone.utc),
                          amount=10_000, ref="PAY-1")
    table = RecordFold()
    _write(table, rate_messages([SourceMessage(b"A001", 0, 0, json.dumps(opened.message_value()).encode())], {},
                               catalog, TOPIC))
    message = SourceMessage(b"A001", 0, 1, json.dumps(topup.message_value()).encode())
    first = rate_messages([message], dict(table.accounts), catalog, TOPIC)
    again = rate_messages([message], dict(table.accounts), catalog, TOPIC)
    events = [[read_output(m.value, "ledger")["kind"].to_list() for m in o.outputs if m.kind == "ledger"]
              for o in (first, again)]
    assert events == [[["TopUpReceived"]], [["TopUpReceived"]]]
