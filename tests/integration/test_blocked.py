"""Poison input parked, not stuck (issue 22, item 5), on the real broker and ClickHouse.

In the middle of an account's log, a correction part that passes its checks but whose
rows cannot be typed (the fold raises): the account is rated up to it and blocked there,
its later lines wait, every other account lands. ``cdrflow blocked`` lists it (exit 3);
``blocked retry`` tries it again at once and it is blocked again (the cause is still
there: exit 3); ``blocked skip --reason`` skips that message: it lands as a ``skipped``
rejection with an ``InputSkipped`` event, the account's later lines are rated. Then a
worker of a new consumer group replays the whole log from offset 0: it meets the poison,
then the operator's commands, and ClickHouse ends exactly as it was: a replay does the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.offline.generate import generate_dataset
from tests.integration.pipeline import Pipeline, wait_for_log

pytestmark = pytest.mark.integration



def _poison(account: str) -> bytes:
    """A correction part the models accept whose new rows hold an amount that is no number."""
    from datetime import datetime, timezone

    from schemas.corrections import CallChange, Correction
    from schemas.ledger import LedgerCommand

    correction = Correction(
        correction_id="00000000000000aa", based_on=0, period_from="2026-03-01", period_to="2026-03-31",
        calls=[CallChange(cdr_id="X1", local_day="2026-03-02", call_class="local", old_amount=0, new_amount=1)],
        rows={"v": 1, "rows": {"cdr_id": ["X1"], "amount": ["not a number"]}},
    )
    command = LedgerCommand(kind="rerate", account_id=account, at=datetime(2026, 3, 20, tzinfo=timezone.utc),
                            correction=correction)
    return json.dumps(command.message_value()).encode()


def _cdrflow(pipeline: Pipeline, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "cdrflow"), *args],
        env={**pipeline.cli_env(), **(env or {})}, capture_output=True, text=True, timeout=300,
    )


def test_a_poison_message_is_parked_retried_skipped_and_a_replay_does_the_same(stack, tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "month", cdrs=2_400, accounts=24, month="2026-03", seed=11, hot_share=0.75)
    pipeline = Pipeline(stack, tmp_path / "pipeline")
    try:
        pipeline.tariffs = pipeline.load_catalog(data.root)
        messages = pipeline.cdr_messages(data.cdrs_file, pipeline.tariffs, ingest_id=pipeline.name, chunk_lines=50)
        lines_of: dict[bytes, int] = {}
        for key, value in messages:
            lines_of[key] = lines_of.get(key, 0) + len(json.loads(value)["line"])
        total = sum(lines_of.values())
        hot = max(lines_of, key=lambda k: lines_of[k])
        account = hot.decode()
        third = [i for i, (key, _) in enumerate(messages) if key == hot][2]
        messages.insert(third + 1, (hot, _poison(account)))  # three chunks rated, then the poison

        worker = pipeline.start_worker()
        wait_for_log(worker, "resumed ", timeout_s=120)
        pipeline.produce(messages)
        wait_for_log(worker, "blocked", timeout_s=120)
        # Nobody else waits: every other account's lines land while it is blocked.
        pipeline.wait_until(
            lambda c: c["rated_calls"] + c["rejected_cdrs"] >= total - lines_of[hot], timeout_s=180, what="the others"
        )

        listed = _cdrflow(pipeline, "blocked", "--json")
        assert listed.returncode == 3, listed.stderr
        note = json.loads(listed.stdout)["blocked"][account]
        assert "not a number" in note["error"], note

        retried = _cdrflow(pipeline, "blocked", "retry", account, "--json")
        assert retried.returncode == 3, retried.stdout + retried.stderr  # the limit is still there
        answer = json.loads(retried.stdout)
        assert answer["outcome"] == "blocked" and answer["blocked"]["offset"] == note["offset"]

        skipped = _cdrflow(pipeline, "blocked", "skip", account, "--reason", "broken correction part, OPS-42", "--json")
        assert skipped.returncode == 0, skipped.stdout + skipped.stderr
        assert json.loads(skipped.stdout)["outcome"] == "unblocked"
        assert json.loads(skipped.stdout)["skipped_offset"] == note["offset"]

        pipeline.wait_until(lambda c: c["rated_calls"] + c["rejected_cdrs"] >= total + 1, timeout_s=180, what="everything")
        client = pipeline.client()
        try:
            reasons = dict(client.execute(
                "SELECT reason, count() FROM rejected_cdrs FINAL WHERE account_id = %(a)s GROUP BY reason", {"a": account}
            ))
            rated = client.execute("SELECT count() FROM rated_calls FINAL WHERE account_id = %(a)s", {"a": account})[0][0]
            events = client.execute(
                "SELECT reference, detail FROM billing_events FINAL WHERE account_id = %(a)s AND kind = 'InputSkipped'",
                {"a": account},
            )
        finally:
            client.disconnect()
        assert reasons.get("skipped") == 1  # the command, kept as a rejection (line 0)
        assert rated > 0
        landed = pipeline.landed()  # each line once (malformed ones have no account), and the command
        assert landed["rated_calls"] + landed["rejected_cdrs"] == total + 1, landed
        assert [ref for ref, _ in events] == [f"{pipeline.topic('cdr.raw')}[{note['partition']}]@{note['offset']}"]
        assert "OPS-42" in events[0][1]
        assert _cdrflow(pipeline, "blocked").returncode == 0
        before = pipeline.export(tmp_path / "before")
        counts = pipeline.landed()
        worker.stop()

        # A replay from offset 0 by a new consumer group, with the same limit: the same result.
        group = f"{pipeline.settings.app_id}-replay"
        replay = pipeline.start_worker(env={"CDRFLOW_APP_ID": group})
        wait_for_log(replay, "trying ", timeout_s=180)
        _wait_replayed(pipeline, group, replay.process.pid)
        after = pipeline.export(tmp_path / "after")
        for name in ("rated.csv", "rejected.csv", "alerts.csv"):
            assert (after / name).read_bytes() == (before / name).read_bytes(), name
        assert pipeline.landed()["rejected_cdrs"] == counts["rejected_cdrs"]
    finally:
        pipeline.stop_workers()  # the replay's too: this test has its own pipeline, not the fixture's


def _wait_replayed(pipeline: Pipeline, group: str, pid: int, timeout_s: float = 240.0) -> None:
    """Until the replaying worker's own figures cover every cdr.raw message with nothing
    blocked, and its group has committed every output message (its sinks landed them)."""
    from kafka import KafkaAdminClient, TopicPartition

    from streams.kafka.client import log_end_offsets
    from streams.stack.status import worker_state

    raw = [TopicPartition(pipeline.topic("cdr.raw"), p) for p in range(pipeline.settings.topic_partitions)]
    outputs = [
        TopicPartition(pipeline.topic(name), p)
        for name in ("billing.events", "rating.rejected", "alerts", "ledger.events", "account.balances")
        for p in range(pipeline.settings.topic_partitions)
    ]
    admin = KafkaAdminClient(bootstrap_servers=pipeline.settings.kafka_servers())
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            ends = log_end_offsets(pipeline.settings.kafka_access(), raw + outputs)
            figures = worker_state(pipeline.prefixed_settings())
            committed = admin.list_group_offsets({group: None}).get(group, {})
            mine = all(
                figures.get(tp.partition, {}).get("worker", "").endswith(f":{pid}")
                and figures[tp.partition]["checkpoint"] == ends[tp]
                and not figures[tp.partition]["blocked"]
                for tp in raw
            )
            landed = all(ends[tp] in (0, None) or (tp in committed and committed[tp].offset >= ends[tp]) for tp in outputs)
            if mine and landed:
                return
            assert time.monotonic() < deadline, f"the replay did not settle: {figures}"
            time.sleep(1.0)
    finally:
        admin.close()
