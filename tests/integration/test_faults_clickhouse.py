"""Faults of ClickHouse under load (issue 22, item 6; tests/integration/faults.py says what
each test checks): hung (SIGSTOP) for ``FAULT_S`` seconds, and its disk full (a ClickHouse of
the test's own on a small tmpfs, filled: inserts refused with "no space left"; skipped where
``mount`` is not allowed)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.settings import Settings
from streams.stack.clickhouse_config import _clickhouse_server_command, _write_clickhouse_config
from streams.stack.servers import free_ports
from tests.integration.faults import FAULT_S, assert_recovered_exactly, feed, join, prepared
from tests.integration.pipeline import Pipeline, wait_for_log

pytestmark = pytest.mark.integration


def test_clickhouse_hung_under_load_loses_nothing_and_lag_recovers(pipeline: Pipeline, stack: Settings,
                                                                   tmp_path: Path) -> None:
    cdrs, messages = prepared(pipeline, tmp_path)
    worker = pipeline.start_worker()
    wait_for_log(worker, "resumed ", timeout_s=120)
    feeder = feed(pipeline, messages)
    wait_for_log(worker, "sink rated: ", timeout_s=120)  # landing while the fault comes
    clickhouse = json.loads((stack.state_dir / "run" / "clickhouse.json").read_text())["pid"]
    os.kill(clickhouse, signal.SIGSTOP)
    try:
        time.sleep(FAULT_S)
        hung = worker.log_text()
    finally:
        os.kill(clickhouse, signal.SIGCONT)
    assert "rated " in hung.split("sink rated: ")[-1]  # rating went on while ClickHouse was hung
    join(feeder)
    assert_recovered_exactly(pipeline, worker, cdrs, tmp_path)


@contextlib.contextmanager
def _clickhouse_on_a_small_disk(tmp_path: Path) -> Iterator[tuple[Settings, Callable[[bool], None]]]:
    """A ClickHouse of its own whose data folder is a 256 MB tmpfs, and a switch that fills
    (True) or frees (False) that disk. Skips the test where mounting is not allowed (not
    root, or a container without the right): a profile made read-only later does not reach
    the sink's open sessions, so it is no stand-in (tried)."""
    home = tmp_path / "small-disk"
    data = home / "clickhouse" / "data"
    data.mkdir(parents=True)
    try:
        mounted = not os.environ.get("CDRFLOW_TEST_NO_MOUNT") and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(data)], capture_output=True
        ).returncode == 0
    except OSError:
        mounted = False
    if not mounted:
        pytest.skip("a small disk needs `mount -t tmpfs` (root): not allowed here")
    tcp, http_port = free_ports(2, range(33000, 34000))
    settings = Settings(state_dir=home, kafka_bootstrap=None, clickhouse_url=None, clickhouse_tcp_port=tcp,
                        clickhouse_http_port=http_port)
    _write_clickhouse_config(settings)
    process = subprocess.Popen([*_clickhouse_server_command(), f"--config-file={home / 'clickhouse' / 'config.xml'}"],
                               cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def full(on: bool) -> None:
        filler = data / "filler"
        if not on:
            filler.unlink(missing_ok=True)
            return
        with filler.open("wb") as out:  # every free byte of the tmpfs
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * (1 << 20))

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
        subprocess.run(["umount", str(data)], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_the_disk_under_clickhouse_full_refuses_inserts_and_nothing_is_lost(stack: Settings, tmp_path: Path) -> None:
    with _clickhouse_on_a_small_disk(tmp_path) as (clickhouse, full):
        pipeline = Pipeline(stack, tmp_path / "pipeline", clickhouse=clickhouse)
        try:
            cdrs, messages = prepared(pipeline, tmp_path)
            worker = pipeline.start_worker()
            wait_for_log(worker, "resumed ", timeout_s=120)
            feeder = feed(pipeline, messages)
            wait_for_log(worker, "sink rated: ", timeout_s=120)
            full(True)
            try:
                wait_for_log(worker, "rows failed (", timeout_s=60)  # an insert refused, retried
                time.sleep(FAULT_S)
                refused = worker.log_text().split("rows failed (", 1)[1].splitlines()[0]
            finally:
                full(False)
            assert "Code: 75" in refused, refused  # CANNOT_WRITE_TO_FILE_DESCRIPTOR: no space left
            join(feeder)
            assert_recovered_exactly(pipeline, worker, cdrs, tmp_path)
        finally:
            pipeline.stop_workers()
