"""Poison input parked, not stuck (issue 22, item 5), in the worker's pure batch step.

An account whose message cannot be rated is rated up to that message and blocked there;
an operator's ``unblock`` command on its log (``cdrflow blocked retry|skip``) is reported
for the runner to try the account again; a skip keeps the message as ``skipped``
rejections with an ``InputSkipped`` event, and a replay of the same log does the same.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import polars as pl
import pytest

import streams.worker.batch as rating_batch
from rating import Catalog
from schemas.cdr_csv import parse_csv
from schemas.ledger import LedgerCommand
from schemas.messages import cdr_chunk_value
from streams.worker.batch import BatchOutcome, rate_isolated, rate_messages
from streams.worker.messages import SourceMessage
from streams.worker.sinks import read_output
from streams.worker.state_records import RecordFold, core_of
from tariffs import load_tariffs
from tests.conftest import VECTORS

TOPIC = "cdr.raw"
POISON = "P-POISON"  # the cdr_id whose chunk makes rating raise


def _setup() -> tuple[Catalog, list[SourceMessage], str]:
    """The mixed vector set's lines of its busiest account in chunks of 3, all on partition
    0, with one line of the third chunk renamed POISON."""
    vectors = VECTORS / "mixed"
    tariffs = load_tariffs(vectors / "plans", vectors / "accounts.toml")
    owner = tariffs.account_of_number()
    lines = parse_csv((vectors / "cdrs.csv").read_bytes()).with_columns(
        account=pl.col("called").replace_strict(owner, default=None, return_dtype=pl.String)
    )
    account = lines.filter(pl.col("account").is_not_null()).get_column("account").mode().sort()[0]
    mine = lines.filter(pl.col("account") == account).drop("account")
    assert mine.height >= 12, "the test needs an account with a dozen calls"
    mine = mine.with_columns(
        cdr_id=pl.when(pl.int_range(pl.len()) == 7).then(pl.lit(POISON)).otherwise(pl.col("cdr_id"))
    )
    messages = [
        SourceMessage(account.encode(), 0, offset, json.dumps(cdr_chunk_value("cdrs.csv", mine.slice(start, 3), "i1")).encode())
        for offset, start in enumerate(range(0, mine.height, 3))
    ]
    return Catalog.from_tariffs(tariffs), messages, account


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rating_batch.rate

    def rate(lines, state, catalog):  # type: ignore[no-untyped-def]
        if lines.get_column("cdr_id").is_in([POISON]).any():
            raise RuntimeError("a rule no test foresaw")
        return real(lines, state, catalog)

    monkeypatch.setattr(rating_batch, "rate", rate)


def _command(account: str, offset: int, *, skip: int | None = None) -> SourceMessage:
    command = LedgerCommand(
        kind="unblock", account_id=account, at=datetime(2026, 3, 20, 9, tzinfo=timezone.utc),
        skip_offset=skip, reason="corrupt chunk, ticket OPS-42" if skip is not None else "",
    )
    return SourceMessage(account.encode(), 0, offset, json.dumps(command.message_value()).encode())


def _write(table: RecordFold, outcome: BatchOutcome) -> None:
    for _, (_, records) in outcome.states.items():
        for key, value in records:
            table.apply(key, value)


def _rows(outcomes: list[BatchOutcome], kind: str) -> pl.DataFrame:
    frames = [read_output(m.value, kind) for o in outcomes for m in o.outputs if m.kind == kind]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def test_an_account_is_rated_up_to_the_message_it_fails_at_and_blocked_there(poisoned: None) -> None:
    catalog, messages, account = _setup()
    key = account.encode()
    outcome, failed = rate_isolated(messages, {}, catalog, TOPIC)
    assert failed == {} and list(outcome.blocked) == [key]
    core = core_of({b"": _core_record(outcome, key)})
    assert core.applied_offset == 1  # chunks 0 and 1 rated; chunk 2 holds the poison
    assert core.blocked["offset"] == 2 and "a rule no test foresaw" in core.blocked["error"]
    rated = _rows([outcome], "rated")
    assert set(rated.get_column("offset").to_list()) == {0, 1}
    assert outcome.checkpoints == {0: len(messages)}


def test_a_skip_keeps_the_blocked_message_as_rejections_and_rates_the_rest(poisoned: None) -> None:
    catalog, messages, account = _setup()
    key = account.encode()
    table = RecordFold()
    first, _ = rate_isolated(messages, {}, catalog, TOPIC)
    _write(table, first)
    skip = _command(account, len(messages), skip=2)
    # The runner's try again: the account's messages from the one it is blocked at, retried.
    again, failed = rate_isolated([*messages[2:], skip], {key: table.accounts.get(key)}, catalog, TOPIC,
                                  retry=frozenset({key}))
    assert failed == {} and not again.blocked
    _write(table, again)
    core = core_of(table.accounts[key])
    assert core.blocked is None and core.applied_offset == len(messages)
    rejected = _rows([again], "rejected")
    skipped = rejected.filter(pl.col("reason") == "skipped")
    assert skipped.height == 3 and POISON in skipped.get_column("cdr_id").to_list()
    assert set(skipped.get_column("offset").to_list()) == {2}
    assert all("ticket OPS-42" in d and "a rule no test foresaw" in d for d in skipped.get_column("detail").to_list())
    events = _rows([again], "ledger")
    assert events.get_column("kind").to_list() == ["InputSkipped"]
    assert events.get_column("amount").to_list() == [0] and events.get_column("reference").to_list() == ["cdr.raw[0]@2"]
    # Every other line is rated as if the skipped message had never been on the log.
    without = [m for m in messages if m.offset != 2]
    expected = _rows([rate_messages(without, {}, catalog, TOPIC)], "rated").sort("cdr_id")
    streamed = pl.concat([_rows([first], "rated"), _rows([again], "rated")]).sort("cdr_id")
    assert streamed.select("cdr_id", "amount", "balance").equals(expected.select("cdr_id", "amount", "balance"))


def test_a_replay_of_the_log_with_the_skip_does_the_same(poisoned: None) -> None:
    catalog, messages, account = _setup()
    key = account.encode()
    log = [*messages, _command(account, len(messages), skip=2)]
    live = RecordFold()
    live_outcomes = []
    first, _ = rate_isolated(messages, {}, catalog, TOPIC)
    _write(live, first)
    again, _ = rate_isolated(log[2:], {key: live.accounts.get(key)}, catalog, TOPIC, retry=frozenset({key}))
    _write(live, again)
    live_outcomes += [first, again]

    # The replay takes the whole log at once: blocked at the poison, the skip command among
    # the messages not applied is reported; the runner's try again then does the skip.
    replay = RecordFold()
    whole, _ = rate_isolated(log, {}, catalog, TOPIC)
    assert whole.unblocks == {key: (0, len(messages))}
    _write(replay, whole)
    retried, _ = rate_isolated(log[2:], {key: replay.accounts.get(key)}, catalog, TOPIC, retry=frozenset({key}))
    _write(replay, retried)
    for kind in ("rated", "rejected", "ledger"):
        a = _rows(live_outcomes, kind)
        b = _rows([whole, retried], kind)
        assert a.sort(a.columns).equals(b.sort(b.columns)), kind
    assert core_of(replay.accounts[key]).blocked is None
    assert core_of(replay.accounts[key]).balance == core_of(live.accounts[key]).balance


def test_a_held_unblock_command_of_a_blocked_account_is_reported_for_a_try_again(poisoned: None) -> None:
    catalog, messages, account = _setup()
    key = account.encode()
    table = RecordFold()
    first, _ = rate_isolated(messages, {}, catalog, TOPIC)
    _write(table, first)
    retry = _command(account, len(messages))
    held = rate_messages([retry], {key: table.accounts.get(key)}, catalog, TOPIC)
    assert held.held == 1 and held.unblocks == {key: (0, len(messages))} and not held.outputs
    # Tried again with the cause still there: blocked again at the same message, and the
    # command is reported again, which the runner does not follow (no progress: no loop).
    again, failed = rate_isolated([*messages[2:], retry], {key: table.accounts.get(key)}, catalog, TOPIC,
                                  retry=frozenset({key}))
    assert list(failed) == [key] and key not in again.states  # its first message fails: nothing written
    assert again.unblocks == {key: (0, len(messages))}


def test_an_unblock_command_of_an_account_not_blocked_changes_nothing() -> None:
    catalog, messages, account = _setup()
    key = account.encode()
    table = RecordFold()
    _write(table, rate_messages(messages[:2], {}, catalog, TOPIC))
    command = _command(account, 2, skip=1)  # names a message already rated
    outcome = rate_messages([command], {key: table.accounts.get(key)}, catalog, TOPIC)
    assert not outcome.unblocks and outcome.held == 0
    assert [m.kind for m in outcome.outputs] == ["balances"]  # applied: nothing but the balance
    assert outcome.states[key][1][-1][0] == key and core_of({b"": _core_record(outcome, key)}).applied_offset == 2


def test_a_skip_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="says why"):
        LedgerCommand(kind="unblock", account_id="A1", at=datetime(2026, 3, 1, tzinfo=timezone.utc), skip_offset=4)


def _core_record(outcome: BatchOutcome, key: bytes):  # type: ignore[no-untyped-def]
    from streams.worker.state_records import Record

    (_, records) = outcome.states[key]
    assert records[-1][0] == key
    return Record(records[-1][1])
