"""``cdrflow worker`` on the real broker and ClickHouse: results, crashes, sharing, garbage (issue 4, items 5-6).

Each test runs its own pipeline (topic prefix, consumer group, database) with workers as
subprocesses, feeds ``cdr.raw`` directly with kafka-python (every line of a vector set,
rejected ones too, so the worker's engine judges them all) and compares what lands in
ClickHouse with the vector set's expected files (``cdrflow compare``) and, for
balances (which the expected files do not carry), with the offline ``rate`` path.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from streams.kafka.client import make_producer, read_to_end
from streams.offline.compare import compare_outputs
from streams.settings import Settings
from streams.stack.servers import up
from streams.worker.notify import alert_id
from streams.worker.state_records import CHECKPOINT_KEY, checkpoint_offset
from tests.conftest import VECTORS
from tests.integration.pipeline import (
    Pipeline,
    WebhookReceiver,
    Worker,
    read_csv_rows,
)
from tests.integration.pipeline import assert_same_as_expected as _assert_same_as_expected
from tests.integration.pipeline import everything_landed as _everything_landed
from tests.integration.pipeline import expected_alerts as _expected_alerts
from tests.integration.pipeline import lines_of as _lines
from tests.integration.pipeline import wait_for_log as _wait_for_log

pytestmark = pytest.mark.integration

#: A worker's first batch comes ~5-20 s after its start (group join, recovery); a crash
#: restart with the same group can take longer (docs/infra.md).
LAND_TIMEOUT_S = 120.0




def _run(pipeline: Pipeline, vectors: Path, **cdr_options: int) -> list[tuple[bytes, bytes]]:
    pipeline.tariffs = pipeline.load_catalog(vectors)
    return pipeline.cdr_messages(vectors / "cdrs.csv", pipeline.tariffs, ingest_id=pipeline.name, **cdr_options)


def test_every_vector_set_through_the_worker_equals_expected(
    pipeline: Pipeline, vector_set: Path, tmp_path: Path
) -> None:
    messages = _run(pipeline, vector_set)
    pipeline.produce(messages)
    pipeline.start_worker()
    pipeline.wait_until(
        _everything_landed(_lines(vector_set / "cdrs.csv"), _expected_alerts(vector_set)),
        timeout_s=LAND_TIMEOUT_S,
        what="the vector set landing",
    )
    _assert_same_as_expected(pipeline, vector_set, tmp_path)


def test_worker_killed_three_times_still_charges_every_call_once(pipeline: Pipeline, tmp_path: Path) -> None:
    vectors = VECTORS / "mixed"
    seed = random.randrange(1 << 30)
    chance = random.Random(seed)
    receiver = WebhookReceiver()
    try:
        # Small chunks fed over a minute: each worker is killed at a random moment within
        # 3 s of its first rated batch, while batches are rated, sent and stored.
        messages = _run(pipeline, vectors, chunk_lines=5)
        env = {"CDRFLOW_ALERT_WEBHOOK": receiver.url}
        feeder = threading.Thread(target=pipeline.produce, args=(messages,), kwargs={"pace_s": 60.0})
        feeder.start()
        worker = pipeline.start_worker(env=env)
        kills = []
        for _ in range(3):
            _wait_for_log(worker, "rated ", timeout_s=LAND_TIMEOUT_S)
            time.sleep(chance.uniform(0.0, 3.0))
            worker.kill()
            kills.append(pipeline.landed())
            worker = pipeline.start_worker(env=env)
        feeder.join(timeout=120)
        counts = pipeline.wait_until(
            _everything_landed(_lines(vectors / "cdrs.csv"), _expected_alerts(vectors)),
            timeout_s=LAND_TIMEOUT_S,
            what=f"the vector set landing after 3 kills (seed {seed})",
        )
        print(f"seed {seed}; landed at the kills: {kills}; at the end: {counts}")
        _assert_same_as_expected(pipeline, vectors, tmp_path)
        # Alerts: every one delivered, each under its own stable key (repeats are allowed
        # by at-least-once delivery, and carry the same key and body).
        expected = {
            alert_id(r["account_id"], r["kind"], r["cdr_id"]) for r in read_csv_rows(vectors / "expected" / "alerts.csv")
        }
        deadline = time.monotonic() + 30
        while {key for key, _ in receiver.requests} != expected and time.monotonic() < deadline:
            time.sleep(0.5)
        keys = [key for key, _ in receiver.requests]
        assert set(keys) == expected
        bodies: dict[str, dict] = {}
        for key, body in receiver.requests:
            assert bodies.setdefault(key, body) == body
        repeats = sum(n - 1 for n in Counter(keys).values())
        print(f"webhook: {len(keys)} POSTs for {len(expected)} alerts ({repeats} repeats)")
    finally:
        receiver.close()


def test_two_workers_share_the_partitions_and_give_the_expected_results(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    vectors = VECTORS / "mixed"
    messages = _run(pipeline, vectors, chunk_lines=20)
    first, second = pipeline.start_worker(), pipeline.start_worker()
    pipeline.produce(messages, pace_s=5.0)
    pipeline.wait_until(
        _everything_landed(_lines(vectors / "cdrs.csv"), _expected_alerts(vectors)),
        timeout_s=LAND_TIMEOUT_S,
        what="the vector set landing with two workers",
    )
    _assert_same_as_expected(pipeline, vectors, tmp_path)
    assert first.alive() and second.alive()
    for worker in (first, second):
        assert "resumed " in worker.log_text() and "cdr.raw[" in worker.log_text().split("resumed ", 1)[1]


def test_a_garbage_message_becomes_a_rejection_and_the_worker_goes_on(pipeline: Pipeline, tmp_path: Path) -> None:
    vectors = VECTORS / "basic"
    messages = _run(pipeline, vectors)
    garbage = [
        (b"A001", b"\xff\xfe not json at all"),
        (b"A002", b'{"v": 1, "line": "not a list"}'),
        (b"", b'{"v": 99}'),
    ]
    worker = pipeline.start_worker()
    pipeline.produce(garbage + messages)
    pipeline.wait_until(
        _everything_landed(_lines(vectors / "cdrs.csv"), _expected_alerts(vectors), extra_rejections=len(garbage)),
        timeout_s=LAND_TIMEOUT_S,
        what="garbage and the vector set landing",
    )
    assert worker.alive()
    client = pipeline.client()
    try:
        rows = client.execute(
            "SELECT source, reason, detail FROM rejected_cdrs FINAL WHERE line = 0 ORDER BY source"
        )
    finally:
        client.disconnect()
    assert len(rows) == len(garbage)
    for source, reason, detail in rows:
        assert source.startswith(pipeline.topic("cdr.raw") + "[") and reason == "malformed"
        assert "is not a CDR chunk" in detail
    # The garbage rows are extra rejections (line 0): the vector set itself is intact.
    exported = pipeline.export(tmp_path / "export")
    rows = read_csv_rows(exported / "rejected.csv")
    with (exported / "rejected.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["line"] != "0")
    compared = compare_outputs(vectors / "expected", exported)
    assert compared.ok, compared.report()


def test_a_worker_resuming_from_older_states_charges_nothing_twice(pipeline: Pipeline, tmp_path: Path) -> None:
    """Rewind each partition's state to its first checkpoint, as a lost state tail would.

    Each partition's state log gets its records up to the first checkpoint written again
    on top: the next worker resumes there, re-rates what those states lack (re-sending
    outputs that ClickHouse collapses) and skips what the others hold.
    """
    vectors = VECTORS / "mixed"
    messages = _run(pipeline, vectors, chunk_lines=20)
    first = pipeline.start_worker()
    # A third of the messages first, the rest once a batch is rated: the first checkpoint
    # of each partition then lies before messages of the second part (however fast the
    # worker joins), so the rewind has something to rate again.
    pipeline.produce(messages[: len(messages) // 3])
    _wait_for_log(first, "rated ", timeout_s=LAND_TIMEOUT_S)
    pipeline.produce(messages[len(messages) // 3 :], pace_s=3.0)
    lines, alerts = _lines(vectors / "cdrs.csv"), _expected_alerts(vectors)
    pipeline.wait_until(_everything_landed(lines, alerts), timeout_s=LAND_TIMEOUT_S, what="the first run")
    first.kill()

    # Each partition's state log (generation 0: too short a run to roll) gets its records
    # up to its first checkpoint written again at its end.
    rewound: dict[int, int] = {}
    producer = make_producer(pipeline.settings)
    for partition in range(pipeline.settings.topic_partitions):
        topic = pipeline.topic(f"{pipeline.settings.app_id}-state") + f".p{partition}.g0"
        again = []
        for record in read_to_end(pipeline.settings, topic)[1:]:  # after the generation's header
            if not record.key.startswith(b"\x00snapshot"):
                again.append((record.key, record.value))
            if record.key == CHECKPOINT_KEY:
                rewound[partition] = checkpoint_offset(record.value)
                break
        for key, value in again if partition in rewound else []:
            producer.send(topic, key=key, value=value, partition=0)
    producer.flush()
    producer.close()
    assert rewound, "the first run wrote no checkpoint"

    second = pipeline.start_worker()
    _wait_for_log(second, "resumed ", timeout_s=LAND_TIMEOUT_S)
    resumed = second.log_text().split("resumed ", 1)[1].split(" with the state", 1)[0]
    for partition, offset in rewound.items():
        assert f"cdr.raw[{partition}]@{offset}" in resumed
    # The rewound messages are all read again: count them in the worker's log.
    behind = sum(
        1 for topic_partition, offset in _source_offsets(pipeline) if offset >= rewound.get(topic_partition, 1 << 62)
    )
    deadline = time.monotonic() + LAND_TIMEOUT_S
    while _messages_rated(second) < behind:
        assert second.alive() and time.monotonic() < deadline, second.log_text()[-4000:]
        time.sleep(0.5)
    counts = pipeline.wait_until(_everything_landed(lines, alerts), timeout_s=30, what="the replay")
    _assert_same_as_expected(pipeline, vectors, tmp_path)
    skipped = sum(int(n) for n in re.findall(r"\((\d+) replays skipped", second.log_text()))
    print(f"rewound to {rewound}; {behind} messages read again, {skipped} skipped; landed {counts}")
    assert skipped > 0


def _source_offsets(pipeline: Pipeline) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in read_to_end(pipeline.settings, pipeline.topic("cdr.raw"))]


def _messages_rated(worker: Worker) -> int:
    return sum(int(n) for n in re.findall(r"rated \d+ lines of (\d+) messages", worker.log_text()))


def test_clickhouse_stopped_mid_run_loses_nothing(pipeline: Pipeline, stack: Settings, tmp_path: Path) -> None:
    vectors = VECTORS / "mixed"
    messages = _run(pipeline, vectors, chunk_lines=20)
    worker = pipeline.start_worker()
    feeder = threading.Thread(target=pipeline.produce, args=(messages,), kwargs={"pace_s": 10.0})
    feeder.start()
    _wait_for_log(worker, "rated ", timeout_s=LAND_TIMEOUT_S)
    record = json.loads((stack.state_dir / "run" / "clickhouse.json").read_text())
    os.kill(record["pid"], signal.SIGTERM)
    try:
        _wait_for_log(worker, "failed (", timeout_s=150)  # the sink saw it go (its own retries: 30 s), retries on
        time.sleep(10)
    finally:
        up(stack)
    feeder.join(timeout=60)
    pipeline.wait_until(
        _everything_landed(_lines(vectors / "cdrs.csv"), _expected_alerts(vectors)),
        timeout_s=LAND_TIMEOUT_S,
        what="the vector set landing after ClickHouse came back",
    )
    assert worker.alive()
    _assert_same_as_expected(pipeline, vectors, tmp_path)
