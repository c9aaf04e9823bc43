"""A pipeline of one test on the shared test stack: its own topics, group and database.

Each test gets a topic prefix, a consumer group (``CDRFLOW_APP_ID``) and a ClickHouse
database of its own, so tests sharing the session's broker and ClickHouse never read each
other's messages or rows. Workers run as subprocesses (``python -m streams.cli.worker``),
as in production, so that they can be killed for real.
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import polars as pl
from clickhouse_driver import Client
from kafka import KafkaAdminClient

from rating import Catalog
from rating.fields import with_typed_fields
from rating.ownership import owner_at, owners_frame
from schemas.cdr_csv import parse_csv
from schemas.messages import CDR_CHUNK_LINES, cdr_chunk_value
from schemas.topics import TOPICS
from streams.catalog.publish import publish_tariffs
from streams.clickhouse.insert import connect
from streams.finance.export import export
from streams.kafka.client import encode_json, make_producer
from streams.offline.compare import compare_outputs
from streams.offline.rate import rate_file
from streams.settings import Settings
from streams.stack.provision import ensure_schema
from tariffs import Tariffs, load_tariffs

PROJECT = Path(__file__).resolve().parents[2]


def stack_cli_env(stack: Settings) -> dict[str, str]:
    """The ``CDRFLOW_*`` variables that point a ``cdrflow`` command at the session's embedded stack."""
    return {
        "CDRFLOW_STATE_DIR": str(stack.state_dir),
        "CDRFLOW_KAFKA_PORT": str(stack.kafka_port),
        "CDRFLOW_S3_PORT": str(stack.s3_port),
        "CDRFLOW_CLICKHOUSE_TCP_PORT": str(stack.clickhouse_tcp_port),
        "CDRFLOW_CLICKHOUSE_HTTP_PORT": str(stack.clickhouse_http_port),
        "CDRFLOW_TOPIC_PARTITIONS": str(stack.topic_partitions),
    }


def stack_url(stack: Settings, database: str) -> str:
    """The URL of a database of the stack's ClickHouse, as its admin (``default`` and the
    password ``up`` generated): how a test points a command at it as an external one."""
    params = stack.clickhouse_params()
    password = quote(params["password"], safe="")
    return f"clickhouse://{params['user']}:{password}@{params['host']}:{params['port']}/{database}"


@dataclass
class Worker:
    """A worker subprocess and its log file."""

    process: subprocess.Popen
    log: Path
    ended_on_purpose: bool = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, no flush."""
        self.ended_on_purpose = True
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        self.ended_on_purpose = True
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Pipeline:
    stack: Settings
    workdir: Path
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    workers: list[Worker] = field(default_factory=list)
    #: the embedded settings of another ClickHouse to land in (default: the stack's)
    clickhouse: Settings | None = None

    def __post_init__(self) -> None:
        self.prefix = f"{self.name}."
        self.database = f"cdrflow_{self.name}"
        self.settings = Settings(
            state_dir=self.stack.state_dir,
            kafka_bootstrap=",".join(self.stack.kafka_servers()),
            clickhouse_url=stack_url(self.clickhouse or self.stack, self.database),
            topic_partitions=self.stack.topic_partitions,
            # The broker is the embedded one (one node), reached as an external Kafka.
            topic_replication_factor=1,
            app_id=f"cdrflow-{self.name}",
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._create_topics()
        ensure_schema(self.settings)

    def cli_env(self) -> dict[str, str]:
        """The ``CDRFLOW_*`` variables that point a ``cdrflow`` command at this pipeline."""
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("CDRFLOW_")},
            "CDRFLOW_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap or "",
            "CDRFLOW_CLICKHOUSE_URL": self.settings.clickhouse_url or "",
            "CDRFLOW_APP_ID": self.settings.app_id,
            "CDRFLOW_TOPIC_PARTITIONS": str(self.settings.topic_partitions),
            "CDRFLOW_TOPIC_REPLICATION_FACTOR": "1",
            "CDRFLOW_TOPIC_PREFIX": self.prefix,
            # Not the stack's folder: its embedded servers would show as this command's own.
            "CDRFLOW_STATE_DIR": str(self.workdir / "cli-state"),
        }

    def prefixed_settings(self) -> Settings:
        """The pipeline's settings with its topic prefix (what ``cli_env`` gives a command)."""
        return Settings(**{**self.settings.model_dump(), "topic_prefix": self.prefix})

    def settled_state(self, timeout_s: float = 60.0) -> dict[int, dict]:
        """The workers' state figures (``worker.status``) once they cover every message of
        ``cdr.raw``: each partition's checkpoint at its end."""
        from kafka import TopicPartition

        from streams.kafka.client import log_end_offsets
        from streams.stack.status import worker_state

        partitions = [TopicPartition(self.topic("cdr.raw"), p) for p in range(self.settings.topic_partitions)]
        deadline = time.monotonic() + timeout_s
        while True:
            ends = {tp.partition: end for tp, end in log_end_offsets(self.settings.kafka_access(), partitions).items()}
            figures = worker_state(self.prefixed_settings())
            if all(figures.get(p, {}).get("checkpoint") == end for p, end in ends.items()):
                return figures
            assert time.monotonic() < deadline, f"state figures {figures} never reached the ends {ends}"
            time.sleep(1.0)

    # ------------------------------------------------------------------ kafka side

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def _create_topics(self) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka_servers())
        try:
            names = [self.topic(name) for name in TOPICS]
            admin.create_topics(
                {
                    self.topic(name): {
                        "num_partitions": self.settings.topic_partitions,
                        "replication_factor": 1,
                        "configs": topic.created_with(1),
                    }
                    for name, topic in TOPICS.items()
                }
            )
            admin.wait_for_topics(names, timeout_ms=30_000)
        finally:
            admin.close()

    def load_catalog(self, vectors: Path) -> Tariffs:
        """Publish a vector set's plans and accounts (``cdrflow load``'s library call)."""
        tariffs = load_tariffs(vectors / "plans", vectors / "accounts.toml")
        publish_tariffs(self.settings, tariffs, vectors / "accounts.toml", topic_prefix=self.prefix)
        return tariffs

    def cdr_messages(
        self, cdrs: Path, tariffs: Tariffs, ingest_id: str, *, chunk_lines: int = CDR_CHUNK_LINES
    ) -> list[tuple[bytes, bytes]]:
        """Every line of a CDR file as ``cdr.raw`` chunks, rejected lines included.

        Lines go to their account's key (by called number); a line whose number belongs
        to no account is keyed by that number. The worker's engine then judges every
        line, steps 1-2 included (ingest would reject those before Kafka).
        """
        batch = parse_csv(cdrs.read_bytes())
        owner = tariffs.account_of_number()
        keyed = batch.with_columns(
            _key=pl.col("called").replace_strict(owner, default=None, return_dtype=pl.String).fill_null(
                pl.col("called").fill_null("")
            )
        )
        owners = owners_frame(tariffs.owners())
        if owners.height:  # a transferred number: the account that held it at the charge time (as ingest routes)
            times = with_typed_fields(batch).select("called", pl.coalesce("answer", "start").alias("charge"))
            held = owner_at(times, owners)
            keyed = keyed.with_columns(
                held.get_column("owner").fill_null("").zip_with(held.get_column("owned"), keyed.get_column("_key"))
                .alias("_key")
            )
        messages = []
        for (key,), lines in keyed.partition_by("_key", maintain_order=True, as_dict=True).items():
            for start in range(0, lines.height, chunk_lines):
                value = cdr_chunk_value(cdrs.name, lines.slice(start, chunk_lines), ingest_id)
                messages.append((key.encode(), encode_json(value)))
        return messages

    def produce(self, messages: list[tuple[bytes, bytes]], *, pace_s: float = 0.0) -> None:
        """Send to ``cdr.raw`` in order; ``pace_s`` spreads them over that many seconds."""
        producer = make_producer(self.settings)
        try:
            started = time.monotonic()
            sent = []
            for index, (key, value) in enumerate(messages):
                sent.append(producer.send(self.topic("cdr.raw"), key=key, value=value))
                if pace_s:
                    due = started + pace_s * (index + 1) / len(messages)
                    if due > time.monotonic():
                        producer.flush()
                        time.sleep(max(0.0, due - time.monotonic()))
            producer.flush()
            # kafka-python's flush does not raise for a refused record; its future does.
            for index, future in enumerate(sent):
                future.get(timeout=60)
        finally:
            producer.close()

    # ------------------------------------------------------------------ workers

    def start_worker(self, *, env: dict[str, str] | None = None) -> Worker:
        index = len(self.workers)
        log = self.workdir / f"worker-{index}.log"
        variables = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CDRFLOW_")},
            "CDRFLOW_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap or "",
            "CDRFLOW_CLICKHOUSE_URL": self.settings.clickhouse_url or "",
            "CDRFLOW_APP_ID": self.settings.app_id,
            "CDRFLOW_TOPIC_PARTITIONS": str(self.settings.topic_partitions),
            "CDRFLOW_TOPIC_REPLICATION_FACTOR": "1",
            "CDRFLOW_STATE_DIR": str(self.settings.state_dir),
            **(env or {}),
        }
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli.worker", "--loglevel", "info", "--topic-prefix", self.prefix],
                cwd=PROJECT,
                env=variables,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        worker = Worker(process, log)
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    # ------------------------------------------------------------------ clickhouse side

    def client(self) -> Client:
        return Client(**self.settings.clickhouse_params(), connect_timeout=5, send_receive_timeout=60)

    def landed(self) -> dict[str, int]:
        """Distinct rows of each table (FINAL), and all stored copies (replays included)."""
        client = self.client()
        try:
            counts = {}
            for table in ("rated_calls", "rejected_cdrs", "alerts"):
                counts[table] = client.execute(f"SELECT count() FROM {table} FINAL")[0][0]
                counts[f"{table}_copies"] = client.execute(f"SELECT count() FROM {table}")[0][0]
            return counts
        finally:
            client.disconnect()

    def wait_until(
        self, done: Callable[[dict[str, int]], bool], *, timeout_s: float, what: str
    ) -> dict[str, int]:
        deadline = time.monotonic() + timeout_s
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            counts = self.landed()
            if done(counts):
                return counts
            dead = [w for w in self.workers if not w.ended_on_purpose and not w.alive()]
            if dead:
                raise AssertionError(f"{what}: a worker exited ({dead[0].process.returncode}){self._logs()}")
            time.sleep(0.5)
        raise AssertionError(f"{what}: not done within {timeout_s:.0f} s; landed {counts}{self._logs()}")

    def _logs(self) -> str:
        return "".join(f"\n--- {w.log}\n{w.log_text()[-6000:]}" for w in self.workers)

    def export(self, out: Path) -> Path:
        """rated.csv, rejected.csv and alerts.csv from ClickHouse (``cdrflow export``'s library call)."""
        client = connect(self.settings)
        try:
            export(client, out)
        finally:
            client.disconnect()
        return out


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def lines_of(cdrs: Path) -> int:
    """CDR lines of a file (its header not counted)."""
    return len(cdrs.read_bytes().splitlines()) - 1


def expected_alerts(vectors: Path) -> int:
    return len(read_csv_rows(vectors / "expected" / "alerts.csv"))


def everything_landed(lines: int, alerts: int, extra_rejections: int = 0) -> Callable[[dict[str, int]], bool]:
    """A :meth:`Pipeline.wait_until` test: every line is a row, and the alerts are in."""
    return lambda c: (
        c["rated_calls"] + c["rejected_cdrs"] >= lines + extra_rejections and c["alerts"] >= alerts
    )


def offline_balances(tariffs: Tariffs, cdrs: Path, out: Path) -> dict[tuple[str, str], str]:
    """(cdr_id, account_id) -> balance after the call, by the offline ``rate`` path."""
    rate_file(cdrs, Catalog.from_tariffs(tariffs), out)
    return {(r["cdr_id"], r["account_id"]): r["balance"] for r in read_csv_rows(out / "rated.csv")}


def assert_export_equals_offline(pipeline: Pipeline, cdrs: Path, tmp_path: Path) -> None:
    """The export equals the offline ``cdrflow rate`` of the same file: rated rows (balances
    included) and alerts row for row, rejections by line and reason."""
    streamed = pipeline.export(tmp_path / "export")
    rate_file(cdrs, Catalog.from_tariffs(pipeline.tariffs), tmp_path / "offline")
    for name, key in (("rated", ["account_id", "cdr_id"]), ("alerts", ["account_id", "cdr_id", "kind"])):
        offline = pl.read_csv(tmp_path / "offline" / f"{name}.csv", infer_schema=False).sort(key)
        online = pl.read_csv(streamed / f"{name}.csv", infer_schema=False).select(offline.columns).sort(key)
        assert online.equals(offline), name
    offline_rejected = {(r["line"], r["reason"]) for r in read_csv_rows(tmp_path / "offline" / "rejected.csv")}
    online_rejected = {(r["line"], r["reason"]) for r in read_csv_rows(streamed / "rejected.csv")}
    assert online_rejected == offline_rejected


def assert_same_as_expected(pipeline: Pipeline, vectors: Path, tmp_path: Path) -> None:
    """The export equals expected/, and every balance equals the offline path's."""
    actual = pipeline.export(tmp_path / "export")
    compared = compare_outputs(vectors / "expected", actual)
    assert compared.ok, compared.report()
    offline = offline_balances(pipeline.tariffs, vectors / "cdrs.csv", tmp_path / "offline")
    streamed = {(r["cdr_id"], r["account_id"]): r["balance"] for r in read_csv_rows(actual / "rated.csv")}
    assert streamed == offline


def wait_for_log(worker: Worker, text: str, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in worker.log_text():
        assert worker.alive(), f"the worker exited:\n{worker.log_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in the worker's log within {timeout_s:.0f} s"
        time.sleep(0.1)


class WebhookReceiver:
    """A local HTTP endpoint that records every POST (body and Idempotency-Key)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        lock = threading.Lock()
        received = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    received.append((self.headers.get("Idempotency-Key", ""), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
