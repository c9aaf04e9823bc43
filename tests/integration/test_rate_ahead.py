"""A batch rated while the one before is written (streams.worker.runner), on the real broker.

The worker rates batch N+1 on the state batch N's write will leave (``RecordFold.after``)
while N's outputs and records go to the broker. Driven here batch by batch, with no
timing in it: ``rate_batch`` returns as soon as N's write has started, so N+1 is always
rated ahead of it.

- Both written whole: the state the two batches leave is the state of the two rated one
  after the other, each on what the one before wrote.
- N blocks an account (its outputs are over the producer's size limit): N+1 is rated
  again on what N wrote, so the blocked account's later lines are held, not charged on a
  state that was never written.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from rating import Catalog
from schemas.cdr_csv import parse_csv
from streams.offline.generate import generate_dataset
from streams.worker.batch import rate_messages
from streams.worker.messages import SourceMessage
from streams.worker.runner import RatedBatch, RatingWorker
from streams.worker.state_log import StateLog
from streams.worker.state_records import RecordFold, core_of
from tariffs import load_tariffs
from tests.test_rating_batch import _messages

pytestmark = [pytest.mark.integration]

HOTLINE = b"A00001"


def _live_order(messages: list[SourceMessage]) -> list[SourceMessage]:
    """The accounts' chunks interleaved, as a live feed sends them, offsets renumbered."""
    by_account: dict[bytes, list[SourceMessage]] = {}
    for message in messages:
        by_account.setdefault(message.key, []).append(message)
    interleaved = [m for m in itertools.chain(*itertools.zip_longest(*by_account.values())) if m is not None]
    return [replace(m, partition=0, offset=offset) for offset, m in enumerate(interleaved)]


def _run(stack, catalog: Catalog, batches: list[list[SourceMessage]], *, max_request_bytes: int):  # type: ignore[no-untyped-def]
    """Each batch handed to a RatingWorker right after the one before (its write in flight);
    gives back the rated batches and the partition's committed records."""

    async def scenario() -> tuple[list[RatedBatch], RecordFold]:
        name = f"t{uuid.uuid4().hex[:8]}"
        state_log = StateLog(stack.kafka_access(), f"{name}.state")
        producer = AIOKafkaProducer(
            bootstrap_servers=stack.kafka_servers(), acks="all", enable_idempotence=False,
            max_request_size=max_request_bytes,
        )
        try:
            await state_log._create(f"{name}.outputs")
            await producer.start()
            worker = RatingWorker(
                state_log,
                send_output=lambda m: producer.send(f"{name}.outputs", key=m.key, value=m.value, partition=0),
                send_status=lambda key, value: producer.send(f"{name}.outputs", key=key, value=value, partition=0),
                mine=lambda: {0},
                source_topic="cdr.raw",
            )
            worker.states[0] = await state_log.load(0)
            rated = [await worker.rate_batch(batch, catalog) for batch in batches]
            await worker.settled()
            return rated, worker.states[0].fold
        finally:
            await producer.stop()
            await state_log.stop()

    return asyncio.run(scenario())


def _written_one_after_the_other(catalog: Catalog, batches: list[list[SourceMessage]]) -> RecordFold:
    fold = RecordFold()
    for batch in batches:
        outcome = rate_messages(batch, {m.key: fold.accounts.get(m.key) for m in batch}, catalog, "cdr.raw")
        for _, records in outcome.states.values():
            for key, value in records:
                fold.apply(key, value)
    return fold


def _values(fold: RecordFold, accounts: set[bytes]) -> dict[bytes, dict[bytes, bytes]]:
    return {a: {n: r.value for n, r in fold.accounts[a].items()} for a in accounts if a in fold.accounts}


@pytest.fixture(scope="module")
def month(tmp_path_factory):  # type: ignore[no-untyped-def]
    data = generate_dataset(tmp_path_factory.mktemp("month"), cdrs=3_000, accounts=20, month="2026-03", seed=5, hot_share=0.5)
    tariffs = load_tariffs(data.plans_dir, data.accounts_file)
    messages = _live_order(_messages(parse_csv(data.cdrs_file.read_bytes()), tariffs.account_of_number(), chunk_lines=2))
    size = len(messages) // 4 + 1
    batches = [messages[start : start + size] for start in range(0, len(messages), size)]
    assert len(batches) == 4 and all(any(m.key == HOTLINE for m in batch) for batch in batches)
    return Catalog.from_tariffs(tariffs), batches


def test_batches_rated_ahead_of_whole_writes_leave_the_state_of_batches_rated_one_after_the_other(stack, month) -> None:
    catalog, batches = month
    rated, fold = _run(stack, catalog, batches, max_request_bytes=1024 * 1024)
    assert [batch.rated_ahead for batch in rated] == [False, True, True, True]
    assert all(batch.ahead is None for batch in rated)  # let go once checked: no chain of batches
    assert all(batch.whole for batch in rated)
    accounts = {m.key for batch in batches for m in batch}
    assert _values(fold, accounts) == _values(_written_one_after_the_other(catalog, batches), accounts)


def test_a_batch_rated_ahead_of_a_write_that_blocked_an_account_is_rated_again(stack, month, caplog) -> None:  # type: ignore[no-untyped-def]
    catalog, batches = month
    caplog.set_level(logging.WARNING, logger="streams.worker.runner")
    # The hotline's rated rows of a batch are over 64 kB: refused for their size.
    rated, fold = _run(stack, catalog, batches, max_request_bytes=64 * 1024)
    first = next(i for i, batch in enumerate(rated) if HOTLINE in batch.failed)
    assert first < len(rated) - 1 and not rated[first].whole
    assert "rating it again on the state written" in caplog.text
    assert not rated[first + 1].rated_ahead  # rated again: on what was written
    # The hotline: charged up to that batch, blocked at its first message of it, the
    # rest held (rated ahead on the unwritten state, it would have gone on from there).
    hot = core_of(fold.accounts[HOTLINE])
    before = [m.offset for batch in batches[:first] for m in batch if m.key == HOTLINE]
    assert hot.applied_offset == max(before, default=-1)
    assert hot.blocked is not None
    assert hot.blocked["offset"] == min(m.offset for m in batches[first] if m.key == HOTLINE)
    # Every account never blocked: as if the blocked ones were not there.
    blocked = set().union(*(batch.failed for batch in rated))
    others = {m.key for batch in batches for m in batch} - blocked
    alone = _written_one_after_the_other(catalog, [[m for m in batch if m.key in others] for batch in batches])
    assert others and _values(fold, others) == _values(alone, others)
