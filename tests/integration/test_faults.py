"""Faults survived (issue 22, item 6): the embedded stack under load, one fault at a time.

Each test feeds a generated month (``FEED_LINES`` CDRs) to one worker, paced over
``FEED_S`` seconds, injects its fault while the lines flow, and then checks:

- **nothing lost**: every line is a rated row or a rejection (``FINAL`` counts);
- **nothing charged twice**: the export equals the offline ``cdrflow rate`` of the same
  file, balances included;
- **lag recovers by itself**: the same worker process, never restarted, has covered every
  ``cdr.raw`` message with its state and its group has committed every output message.

Faults: ClickHouse hung (SIGSTOP) for ``FAULT_S`` seconds; the broker killed (SIGKILL)
mid-run and started again; the disk under ClickHouse full (a ClickHouse of the test's
own on a small tmpfs, filled: inserts refused with "no space left"; where ``mount`` is
not allowed, the same refusal made by a read-only profile); a webhook that never answers.
``FAULT_S`` is 20 s, not the issue's minute: nothing in the retry paths changes after the
first backoff cap (the sink's 30 s budget, then its 1-60 s waits; the producers' 30 s),
so a longer outage only repeats the same retries (``CDRFLOW_TEST_FAULT_S`` sets it).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest
from kafka import KafkaAdminClient, TopicPartition

from rating import Catalog
from streams.kafka.client import log_end_offsets
from streams.offline.generate import generate_dataset
from streams.offline.rate import rate_file
from streams.settings import Settings
from streams.stack.clickhouse_config import _clickhouse_server_command, _write_clickhouse_config
from streams.stack.servers import free_ports, up
from streams.stack.status import worker_state
from tests.integration.pipeline import Pipeline, Worker, read_csv_rows, wait_for_log

pytestmark = pytest.mark.integration

FAULT_S = float(os.environ.get("CDRFLOW_TEST_FAULT_S", "20"))
FEED_S = FAULT_S + 10.0
FEED_LINES = 12_000
LAND_TIMEOUT_S = 240.0
OUTPUTS = ("billing.events", "rating.rejected", "cdr.rejected", "alerts", "ledger.events", "account.balances")


def _prepared(pipeline: Pipeline, tmp_path: Path) -> tuple[Path, list[tuple[bytes, bytes]]]:
    data = generate_dataset(tmp_path / "month", cdrs=FEED_LINES, accounts=150, month="2026-03", seed=22)
    pipeline.tariffs = pipeline.load_catalog(data.root)
    messages = pipeline.cdr_messages(data.cdrs_file, pipeline.tariffs, ingest_id=pipeline.name, chunk_lines=40)
    return data.cdrs_file, messages


def _feed(pipeline: Pipeline, messages: list[tuple[bytes, bytes]]) -> threading.Thread:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.produce(messages, pace_s=FEED_S)
        except BaseException as error:  # noqa: BLE001 - reported by the join below
            errors.append(error)

    feeder = threading.Thread(target=run, daemon=True)
    feeder.errors = errors  # type: ignore[attr-defined]
    feeder.start()
    return feeder


def _join(feeder: threading.Thread) -> None:
    feeder.join(timeout=FEED_S + 120)
    assert not feeder.is_alive(), "the feeder did not finish"
    assert not feeder.errors, feeder.errors  # type: ignore[attr-defined]


def _lines(cdrs: Path) -> int:
    return len(cdrs.read_bytes().splitlines()) - 1


def _assert_recovered_exactly(pipeline: Pipeline, worker: Worker, cdrs: Path, tmp_path: Path) -> None:
    lines = _lines(cdrs)
    counts = pipeline.wait_until(
        lambda c: c["rated_calls"] + c["rejected_cdrs"] >= lines, timeout_s=LAND_TIMEOUT_S, what="every line"
    )
    assert counts["rated_calls"] + counts["rejected_cdrs"] == lines, counts  # nothing lost, nothing twice
    assert worker.alive(), worker.log_text()[-3000:]
    _wait_lag_zero(pipeline, worker)
    # Nothing charged twice: the export is the offline rating of the same file.
    streamed = pipeline.export(tmp_path / "export")
    rate_file(cdrs, Catalog.from_tariffs(pipeline.tariffs), tmp_path / "offline")
    for name, key in (("rated", ["account_id", "cdr_id"]), ("alerts", ["account_id", "cdr_id", "kind"])):
        offline = pl.read_csv(tmp_path / "offline" / f"{name}.csv", infer_schema=False).sort(key)
        online = pl.read_csv(streamed / f"{name}.csv", infer_schema=False).select(offline.columns).sort(key)
        assert online.equals(offline), name
    offline_rejected = {(r["line"], r["reason"]) for r in read_csv_rows(tmp_path / "offline" / "rejected.csv")}
    assert {(r["line"], r["reason"]) for r in read_csv_rows(streamed / "rejected.csv")} == offline_rejected


def _wait_lag_zero(pipeline: Pipeline, worker: Worker, timeout_s: float = 120.0) -> None:
    """Until this worker's figures cover every cdr.raw message and its group has committed
    every message of the output topics (the sinks landed them): lag 0, by itself."""
    partitions = range(pipeline.settings.topic_partitions)
    raw = [TopicPartition(pipeline.topic("cdr.raw"), p) for p in partitions]
    outputs = [TopicPartition(pipeline.topic(name), p) for name in OUTPUTS for p in partitions]
    admin = KafkaAdminClient(bootstrap_servers=pipeline.settings.kafka_servers())
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            ends = log_end_offsets(pipeline.settings.kafka_access(), raw + outputs, timeout_s=10)
            figures = worker_state(pipeline.prefixed_settings())
            committed = admin.list_group_offsets({pipeline.settings.app_id: None}).get(pipeline.settings.app_id, {})
            behind = {
                f"{tp.topic}[{tp.partition}]": ends[tp] - (committed[tp].offset if tp in committed else 0)
                for tp in outputs
                if ends[tp] and (tp not in committed or committed[tp].offset < ends[tp])
            }
            stale = [p for p in partitions
                     if not str(figures.get(p, {}).get("worker", "")).endswith(f":{worker.process.pid}")
                     or figures[p]["checkpoint"] != ends[raw[p]] or figures[p]["blocked"]]
            if not behind and not stale:
                return
            assert time.monotonic() < deadline, f"lag did not come back to 0: outputs {behind}, partitions {stale}"
            time.sleep(1.0)
    finally:
        admin.close()


# ------------------------------------------------------------------------------ faults


def test_clickhouse_hung_under_load_loses_nothing_and_lag_recovers(pipeline: Pipeline, stack: Settings,
                                                                   tmp_path: Path) -> None:
    cdrs, messages = _prepared(pipeline, tmp_path)
    worker = pipeline.start_worker()
    wait_for_log(worker, "resumed ", timeout_s=120)
    feeder = _feed(pipeline, messages)
    wait_for_log(worker, "sink rated: ", timeout_s=120)  # landing while the fault comes
    clickhouse = json.loads((stack.state_dir / "run" / "clickhouse.json").read_text())["pid"]
    os.kill(clickhouse, signal.SIGSTOP)
    try:
        time.sleep(FAULT_S)
        hung = worker.log_text()
    finally:
        os.kill(clickhouse, signal.SIGCONT)
    assert "rated " in hung.split("sink rated: ")[-1]  # rating went on while ClickHouse was hung
    _join(feeder)
    _assert_recovered_exactly(pipeline, worker, cdrs, tmp_path)


def test_the_broker_killed_and_restarted_under_load_loses_nothing(pipeline: Pipeline, stack: Settings,
                                                                  tmp_path: Path) -> None:
    cdrs, messages = _prepared(pipeline, tmp_path)
    worker = pipeline.start_worker()
    wait_for_log(worker, "resumed ", timeout_s=120)
    half = len(messages) // 2
    pipeline.produce(messages[:half])
    wait_for_log(worker, "rated ", timeout_s=120)  # the worker is rating, sending, writing state
    broker = json.loads((stack.state_dir / "run" / "kafka.json").read_text())["pid"]
    os.kill(broker, signal.SIGKILL)
    time.sleep(5)  # clients find it gone
    info = up(stack)  # the same store: the log is all there
    assert [s.name for s in info.servers if not s.reused] == ["kafka"]
    feeder = _feed(pipeline, messages[half:])
    _join(feeder)
    _assert_recovered_exactly(pipeline, worker, cdrs, tmp_path)


@contextlib.contextmanager
def _clickhouse_on_a_small_disk(tmp_path: Path) -> Iterator[tuple[Settings, Callable[[bool], str]]]:
    """A ClickHouse of its own whose data folder is a 256 MB tmpfs, and a switch that fills
    (True) or frees (False) that disk; where mounting is not allowed, the switch makes the
    server refuse inserts through a read-only profile instead. Yields its settings."""
    home = tmp_path / "small-disk"
    home.mkdir()
    data = home / "clickhouse" / "data"
    data.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(data)],
                             capture_output=True).returncode == 0
    tcp, http_port = free_ports(2, range(33000, 34000))
    settings = Settings(state_dir=home, kafka_bootstrap=None, clickhouse_url=None, clickhouse_tcp_port=tcp,
                        clickhouse_http_port=http_port)
    _write_clickhouse_config(settings)
    process = subprocess.Popen([*_clickhouse_server_command(), f"--config-file={home / 'clickhouse' / 'config.xml'}"],
                               cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    users = home / "clickhouse" / "users.xml"
    normal = users.read_text()

    def full(on: bool) -> str:
        if mounted:
            filler = data / "filler"
            if on:
                with filler.open("wb") as out:  # every free byte of the tmpfs
                    with contextlib.suppress(OSError):
                        while True:
                            out.write(b"\0" * (1 << 20))
                return "disk full (tmpfs)"
            filler.unlink(missing_ok=True)
            return "disk freed"
        users.write_text(normal.replace("<max_memory_usage>", "<readonly>1</readonly><max_memory_usage>")
                         if on else normal)
        time.sleep(6)  # ClickHouse reads its users file again within a few seconds
        return "inserts refused (read-only profile)" if on else "inserts allowed"

    try:
        from clickhouse_driver import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                Client(**{**settings.clickhouse_params(), "database": ""}, connect_timeout=1).execute("SELECT 1")
                break
            except Exception:
                assert process.poll() is None and time.monotonic() < deadline, "the small-disk ClickHouse did not start"
                time.sleep(0.3)
        yield settings, full
    finally:
        process.terminate()
        process.wait(timeout=30)
        if mounted:
            subprocess.run(["umount", str(data)], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_the_disk_under_clickhouse_full_refuses_inserts_and_nothing_is_lost(stack: Settings, tmp_path: Path) -> None:
    with _clickhouse_on_a_small_disk(tmp_path) as (clickhouse, full):
        pipeline = Pipeline(stack, tmp_path / "pipeline", clickhouse=clickhouse)
        try:
            cdrs, messages = _prepared(pipeline, tmp_path)
            worker = pipeline.start_worker()
            wait_for_log(worker, "resumed ", timeout_s=120)
            feeder = _feed(pipeline, messages)
            wait_for_log(worker, "sink rated: ", timeout_s=120)
            what = full(True)
            try:
                wait_for_log(worker, "failed (", timeout_s=60)  # an insert refused, retried
                time.sleep(FAULT_S)
                refused = worker.log_text().split("failed (", 1)[1].splitlines()[0]
            finally:
                full(False)
            assert any(word in refused for word in ("space", "Cannot", "readonly", "Code")), (what, refused)
            _join(feeder)
            _assert_recovered_exactly(pipeline, worker, cdrs, tmp_path)
        finally:
            pipeline.stop_workers()


class _Hung(http.server.BaseHTTPRequestHandler):
    """A webhook that takes each POST and never answers."""

    arrived = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        type(self).arrived += 1
        time.sleep(3600)

    def log_message(self, *args: object) -> None:
        pass


def test_a_webhook_that_hangs_holds_nothing_back(pipeline: Pipeline, tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hung)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cdrs, messages = _prepared(pipeline, tmp_path)
        worker = pipeline.start_worker(env={
            "CDRFLOW_ALERT_WEBHOOK": f"http://127.0.0.1:{server.server_address[1]}/alerts",
            "CDRFLOW_ALERT_WEBHOOK_TIMEOUT_S": "2",
            "CDRFLOW_ALERT_WEBHOOK_TRIES": "2",
        })
        wait_for_log(worker, "resumed ", timeout_s=120)
        feeder = _feed(pipeline, messages)
        _join(feeder)
        # The webhook never answers, for the whole run: everything lands all the same.
        _assert_recovered_exactly(pipeline, worker, cdrs, tmp_path)
        log = worker.log_text()
        assert "given up after 2 tries" in log and "no answer within 2 s" in log
        assert "not posted to" in log  # the alerts of the pause, given up at once
        assert _Hung.arrived >= 2
    finally:
        server.shutdown()
