"""Faults of the broker and the webhook under load (issue 22, item 6;
tests/integration/faults.py says what each test checks): the broker killed (SIGKILL)
mid-run and started again; a webhook that never answers."""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from streams.settings import Settings
from streams.stack.servers import up
from tests.integration.faults import assert_recovered_exactly, feed, join, prepared
from tests.integration.pipeline import Pipeline, wait_for_log

pytestmark = pytest.mark.integration


def test_the_broker_killed_and_restarted_under_load_loses_nothing(pipeline: Pipeline, stack: Settings,
                                                                  tmp_path: Path) -> None:
    cdrs, messages = prepared(pipeline, tmp_path)
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
    feeder = feed(pipeline, messages[half:])
    join(feeder)
    assert_recovered_exactly(pipeline, worker, cdrs, tmp_path)


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
        cdrs, messages = prepared(pipeline, tmp_path)
        worker = pipeline.start_worker(env={
            "CDRFLOW_ALERT_WEBHOOK": f"http://127.0.0.1:{server.server_address[1]}/alerts",
            "CDRFLOW_ALERT_WEBHOOK_TIMEOUT_S": "2",
            "CDRFLOW_ALERT_WEBHOOK_TRIES": "2",
        })
        wait_for_log(worker, "resumed ", timeout_s=120)
        feeder = feed(pipeline, messages)
        join(feeder)
        # The webhook never answers, for the whole run: everything lands all the same.
        assert_recovered_exactly(pipeline, worker, cdrs, tmp_path)
        log = worker.log_text()
        assert "given up after 2 tries" in log and "no answer within 2 s" in log
        assert "not posted to" in log  # the alerts of the pause, given up at once
        assert _Hung.arrived >= 2
    finally:
        server.shutdown()
