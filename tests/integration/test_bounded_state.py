"""Issue 12 on the real broker and ClickHouse: a hotline's month, restarts after history, a blocked account.

- One account takes over 60k calls of a generated month (a large hotline): the worker
  rates it exactly as the offline ``rate`` path does, no state record comes near the
  broker's message limit, and the state log rolls to new generations on the way;
- after that history, a worker killed with SIGKILL and started again reads one
  generation, not the history, and rates a new file exactly;
- an account whose outputs the broker refuses (a producer limit set too low) is blocked:
  the other accounts land, ``cdrflow status`` names it, and a worker started with the
  right limit rates its lines, every result exact.

Prints the figures (run with ``-s``); the speed targets live in bench/soak_bench.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from streams.offline.generate import generate_dataset
from tests.integration.pipeline import Pipeline, assert_export_equals_offline, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CDRS = 72_000
ACCOUNTS = 600
HOT_SHARE = 0.87  # ~62k calls of A00001
LATER = 1_000  # lines held back, sent after the restart


def _log_time(line: str) -> datetime:
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


def test_a_hotline_month_restarts_after_history_and_stays_exact(stack, tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "month", cdrs=CDRS, accounts=ACCOUNTS, month="2026-03", seed=7, hot_share=HOT_SHARE)
    pipeline = Pipeline(stack, tmp_path / "pipeline")
    try:
        pipeline.tariffs = pipeline.load_catalog(data.root)
        messages = pipeline.cdr_messages(data.cdrs_file, pipeline.tariffs, ingest_id=pipeline.name)
        hot = pl.read_csv(data.cdrs_file, infer_schema=False).filter(
            pl.col("called").is_in(next(a.numbers for a in pipeline.tariffs.accounts if a.id == "A00001"))
        )
        assert hot.height >= 60_000
        # The last message of each of a few small accounts comes after the restart.
        later = [i for i, (key, _) in enumerate(messages) if key != b"A00001"][-LATER // 100 :]
        first = [m for i, m in enumerate(messages) if i not in later]
        # A small roll size, so that the state log starts new generations during the run.
        roll = {"CDRFLOW_STATE_ROLL_BYTES": str(512 * 1024)}
        worker = pipeline.start_worker(env=roll)
        wait_for_log(worker, "resumed ", timeout_s=120)
        started = time.monotonic()
        pipeline.produce(first)
        lines_first = sum(len(json.loads(value)["line"]) for _, value in first)
        pipeline.wait_until(
            lambda c: c["rated_calls"] + c["rejected_cdrs"] >= lines_first, timeout_s=300, what="the month landing"
        )
        landed = time.monotonic() - started
        batches = [line for line in worker.log_text().splitlines() if re.search(r"rated \d+ lines of", line)]
        rolls = [line for line in worker.log_text().splitlines() if "generation " in line and " -> " in line]
        figures = pipeline.settled_state()
        largest = max(f["largest_value"] for f in figures.values())
        print(
            f"\n{lines_first:,} lines ({hot.height:,} of A00001) landed {landed:.1f} s after the first send "
            f"({lines_first / landed:,.0f} lines/s), {len(batches)} batches, {len(rolls)} generation rolls; "
            f"largest state value {largest:,} bytes; state per partition: "
            + "; ".join(f"[{p}] g{f['generation']} {f['live_bytes']:,} B" for p, f in figures.items())
        )
        assert worker.alive()
        assert largest < 64 * 1024
        assert rolls, "the state log never rolled to a new generation"
        assert all(not f["blocked"] for f in figures.values())

        worker.kill()
        restarted = pipeline.start_worker(env=roll)
        began = time.monotonic()
        pipeline.produce([messages[i] for i in later])
        lines_later = sum(len(json.loads(messages[i][1])["line"]) for i in later)
        pipeline.wait_until(
            lambda c: c["rated_calls"] + c["rejected_cdrs"] >= lines_first + lines_later,
            timeout_s=180,
            what="the new lines after the restart",
        )
        resumed = restarted.log_text().split("resumed ", 1)[1].splitlines()[0]
        print(f"restart after kill -9: the new lines landed {time.monotonic() - began:.1f} s after its start; {resumed}")
        # Every partition's state is read from its newest generation, not the history.
        generations = [int(g) for g in re.findall(r"generation (\d+):", resumed)]
        assert generations and max(generations) >= 1, resumed
        assert_export_equals_offline(pipeline, data.cdrs_file, tmp_path)
    finally:
        pipeline.stop_workers()


def test_an_account_whose_outputs_are_refused_is_blocked_and_rated_after_a_restart(stack, tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "month", cdrs=4_000, accounts=40, month="2026-03", seed=5, hot_share=0.5)
    pipeline = Pipeline(stack, tmp_path / "pipeline")
    try:
        pipeline.tariffs = pipeline.load_catalog(data.root)
        messages = pipeline.cdr_messages(data.cdrs_file, pipeline.tariffs, ingest_id=pipeline.name)
        lines_of = {}
        for key, value in messages:
            lines_of[key.decode()] = lines_of.get(key.decode(), 0) + len(json.loads(value)["line"])
        lines = sum(lines_of.values())
        # A producer limit far below the hotline's output messages (~1000 rated rows):
        # its outputs are refused for their size, the small accounts' are not.
        worker = pipeline.start_worker(env={"CDRFLOW_PRODUCER_MAX_REQUEST_BYTES": str(64 * 1024)})
        wait_for_log(worker, "resumed ", timeout_s=120)
        pipeline.produce(messages)
        wait_for_log(worker, "blocked", timeout_s=120)  # the figures go out with it
        status = subprocess.run(
            [str(Path(sys.executable).parent / "cdrflow"), "status", "--json"],
            env=pipeline.cli_env(), capture_output=True, text=True, timeout=120,
        )
        assert status.returncode == 3, status.stderr
        blocked = json.loads(status.stdout)["blocked_accounts"]
        assert "A00001" in blocked and len(blocked) < 10, blocked
        assert all("MessageSizeTooLarge" in failure["error"] for failure in blocked.values())
        # Every other account lands; the blocked ones' calls wait in cdr.raw.
        waiting = sum(lines_of[account] for account in blocked)
        pipeline.wait_until(
            lambda c: c["rated_calls"] + c["rejected_cdrs"] >= lines - waiting, timeout_s=180, what="the others landing"
        )
        # (Outputs of a blocked account the broker took before the refusal stay; the retry
        # sends them again, equal, and ClickHouse collapses them.)
        time.sleep(3)
        counts = pipeline.landed()
        assert counts["rated_calls"] + counts["rejected_cdrs"] < lines
        assert worker.alive()

        worker.stop()
        pipeline.start_worker()  # the default limit: the blocked account is tried again
        pipeline.wait_until(lambda c: c["rated_calls"] + c["rejected_cdrs"] >= lines, timeout_s=180, what="the hotline")
        assert_export_equals_offline(pipeline, data.cdrs_file, tmp_path)
        # The retried accounts are free again: the new worker's figures say so.
        assert not any(f["blocked"] for f in pipeline.settled_state().values())
    finally:
        pipeline.stop_workers()


def test_a_generation_cut_short_while_rolling_is_never_used(stack) -> None:
    import asyncio
    import uuid

    import orjson

    from streams.worker.state_log import GENERATION_KEY, SNAPSHOT_KEY, StateLog
    from streams.worker.state_records import CHECKPOINT_KEY, Core, checkpoint_value, record_key, tagged

    base = f"t{uuid.uuid4().hex[:8]}.state"

    async def scenario() -> tuple[int, int, int]:
        log = StateLog(stack.kafka_access(), base)
        try:
            state = await log.load(0)  # a new partition: generation 0
            await log.append(state, [
                (record_key(b"A", b"m1"), tagged(4, b'{"allowance": 60}')),
                (b"A", Core(applied_offset=4, balance=100, parts=[b"m1"]).encode()),
                (CHECKPOINT_KEY, checkpoint_value(5)),
            ])
            # A worker killed while rolling: generation 1 has its header and part of the
            # snapshot, no marker; generation 2 has a marker that counts more records.
            snapshot = list(state.fold.records())
            for generation, tail in ((1, []), (2, [(SNAPSHOT_KEY, orjson.dumps({"records": len(snapshot) + 1}))])):
                topic = log.topic(0, generation)
                await log._create(topic)
                header = orjson.dumps({"generation": generation, "partition": 0})
                futures = await log._send(topic, [(GENERATION_KEY, header), *snapshot[:-1], *tail])
                await asyncio.gather(*futures)
            loaded = await log.load(0)
            first = loaded.generation
            rolled = await log.roll(loaded, lambda: True)
            again = await log.load(0)
            return first, again.generation if rolled else -1, again.checkpoint
        finally:
            await log.stop()

    loaded, after_roll, checkpoint = asyncio.run(scenario())
    assert loaded == 0  # neither cut-short generation
    assert after_roll == 3 and checkpoint == 5  # a roll goes past them, with the whole state
