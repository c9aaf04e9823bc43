"""End to end on the embedded stack: ``cdrflow ingest --wait`` against a raw kafka-python
round trip of the same lines through the same broker, and the ClickHouse sink's rows/s.

In one run, on a throwaway stack (temporary state folder, free ports):

1. **raw round trip**: every CDR line produced as one message with kafka-python and
   consumed back by a consumer started first; time from the first send to the last
   message received (docs/infra.md measured ~12.8k lines/s here). It runs on a topic of
   its own (``bench.round-trip``, as many partitions as ``cdr.raw``): on ``cdr.raw`` its
   200k one-line messages would be input the worker rates (each a rejection keyed by a
   CDR id, with state of its own) while the month is measured;
2. **cdrflow end to end**: `cdrflow load`, a background `cdrflow worker`, a small warm-up
   file ingested and landed (so the group join is not counted), then the generated month
   ingested with `--wait`: ingest start to the last row landed in ClickHouse (watched by
   polling ClickHouse; the command itself returns ~2 s later, once the alert count has
   settled, and that time is printed too);
3. **sink**: ``bench/sink_bench.py --state-dir`` on the same stack (median rows/s of
   ``insert_rated`` of 1M rated calls).

Targets (issue 4): end to end >= the raw round trip; sink >= 500k rows/s.

**Where the time goes** (issue 26): the worker runs at ``info`` level, which logs one line
per rating batch and per sink insert (no profiler: the figures are those of an ordinary
run). After the month landed the bench sums, from the worker's log, the seconds each stage
took (a rating batch's rating, the wait for its outputs' acknowledgements, its state
writes; each sink's decode and insert) and reads the CPU seconds every process of the
stack used meanwhile (``/proc/PID/stat``; ingest's from its ``rusage``), per CDR. Stages
overlap (a batch is rated while the one before is written, sinks run beside the rating),
so the seconds add up to more than the wall clock.

Usage::

    .venv/bin/python bench/pipeline_bench.py                  # 200k CDRs, 2k accounts
    .venv/bin/python bench/pipeline_bench.py --cdrs 50000 --accounts 500 --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Runnable from a plain checkout too, not only from an installed project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402
from kafka.errors import TopicAlreadyExistsError  # noqa: E402

from streams.offline.generate import generate_dataset  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.stack import servers as stack  # noqa: E402
from streams.stack.processes import _live_record  # noqa: E402

BIN = Path(sys.executable).parent
TARGET_SINK_ROWS_PER_S = 500_000
#: The raw round trip's own topic (not cdr.raw: see the module's docstring).
ROUND_TRIP_TOPIC = "bench.round-trip"
#: The servers of the stack whose CPU is counted, by the names of their pid files.
_PROCESSES = ("worker", "kafka", "clickhouse", "s3")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    say = (lambda _: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix="cdrflow-pipeline-bench-") as tmp:
        root = Path(tmp)
        ports = stack.free_ports(4)
        env = {
            **os.environ,
            "CDRFLOW_STATE_DIR": str(root / "state"),
            "CDRFLOW_KAFKA_PORT": str(ports[0]),
            "CDRFLOW_CLICKHOUSE_TCP_PORT": str(ports[1]),
            "CDRFLOW_CLICKHOUSE_HTTP_PORT": str(ports[2]),
            "CDRFLOW_S3_PORT": str(ports[3]),
        }
        for key in ("CDRFLOW_KAFKA_BOOTSTRAP", "CDRFLOW_CLICKHOUSE_URL"):
            env.pop(key, None)
        os.environ.update(env)
        settings = Settings()
        try:
            say("starting the stack ...")
            _cdrflow(env, "up")
            say(f"generating {args.cdrs:,} CDRs over {args.accounts:,} accounts ...")
            data = generate_dataset(root / "data", cdrs=args.cdrs, accounts=args.accounts, month="2026-03", seed=11)
            warmup = generate_dataset(root / "warmup", cdrs=200, accounts=args.accounts, month="2026-02", seed=12)
            lines = (root / "data" / "cdrs.csv").read_bytes().splitlines()[1:]
            say("raw kafka-python round trip ...")
            raw_s = _raw_round_trip(settings, lines)
            say("cdrflow: load, worker, warm-up ...")
            _cdrflow(env, "load", "--plans", data.plans_dir, "--accounts", data.accounts_file)
            worker = stack.start_worker(settings, loglevel="info")  # a line per batch: the stages
            _cdrflow(env, "ingest", warmup.cdrs_file, "--wait", "--timeout", "300")
            say("cdrflow ingest --wait of the month ...")
            watch = _LandingWatch(settings, len(lines))
            log_from = Path(worker.log).stat().st_size
            cpu_before = _cpu_of_servers(root / "state")
            children_before = _children_cpu()
            started = time.perf_counter()
            watch.start(started)
            ingested = json.loads(_cdrflow(env, "ingest", data.cdrs_file, "--wait", "--timeout", "1200", "--json"))
            command_s = time.perf_counter() - started
            pipeline_s = watch.stop() or command_s
            cpu = {
                name: round(after - cpu_before.get(name, 0.0), 2)
                for name, after in _cpu_of_servers(root / "state").items()
            }
            cpu["ingest"] = round(_children_cpu() - children_before, 2)
            stages = _stages(Path(worker.log), log_from)
            say("sink ...")
            sink = json.loads(
                _run(
                    env,
                    sys.executable, str(Path(__file__).with_name("sink_bench.py")),
                    "--state-dir", str(root / "state"), "--cdrs", str(args.sink_cdrs),
                    "--accounts", str(max(args.accounts, args.sink_cdrs // 50)), "--repeat", "3", "--json",
                    check=False,  # it exits 1 when its own target is missed: the figure still counts
                )
            )
        finally:
            _cdrflow(env, "down", check=False)
    raw_rate = len(lines) / raw_s
    pipeline_rate = len(lines) / pipeline_s
    sink_rate = _sink_rows_per_s(sink)
    figures = {
        "cdrs": len(lines),
        "raw_round_trip_s": round(raw_s, 2),
        "raw_lines_per_s": round(raw_rate),
        "pipeline_s": round(pipeline_s, 2),
        "pipeline_lines_per_s": round(pipeline_rate),
        # where the end-to-end time goes: the ingest command's own sending (read, check,
        # route, produce, with its start-up reads), then waiting for the last rows to land
        "ingest_wait_command_s": round(command_s, 2),
        "ingest_send_s": ingested["seconds"],
        "ingest_file_s": ingested["files"][0]["seconds"],
        "landed_after_send_s": round(pipeline_s - ingested["seconds"], 2),
        "ratio_pipeline_to_raw": round(pipeline_rate / raw_rate, 2),
        "sink_rows_per_s": sink_rate,
        "stages_s": stages,
        "cpu_s": cpu,
        "cpu_us_per_cdr": {name: round(seconds * 1e6 / len(lines), 1) for name, seconds in cpu.items()},
        "targets_met": pipeline_rate >= raw_rate and (sink_rate or 0) >= TARGET_SINK_ROWS_PER_S,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"CDR lines          {len(lines):,}")
        print(f"raw round trip     {raw_s:.2f} s  ({raw_rate:,.0f} lines/s; kafka-python, one message per line)")
        print(f"cdrflow end to end {pipeline_s:.2f} s  ({pipeline_rate:,.0f} lines/s; ingest start to last row in ClickHouse)")
        print(
            f"  (`cdrflow ingest --wait` itself returned after {command_s:.2f} s: it lets the alert count settle)"
        )
        print(
            f"  of which          {figures['ingest_send_s']:.2f} s ingest sending ({figures['ingest_file_s']:.2f} s "
            f"reading/routing/producing the file), then {figures['landed_after_send_s']:.2f} s until the last row landed"
        )
        print(f"ratio              {pipeline_rate / raw_rate:.2f} x the raw round trip")
        print(f"sink               {sink_rate:,} rows/s (insert_rated)" if sink_rate else "sink               (no figure)")
        _print_stages(figures, len(lines), ingested)
        verdict = "PASS" if figures["targets_met"] else "FAIL"
        print(f"targets: end to end >= raw round trip, sink >= 500k rows/s: {verdict}")
    return 0 if figures["targets_met"] else 1


def _raw_round_trip(settings: Settings, lines: list[bytes]) -> float:
    """Produce every line as one keyed message and consume them all back; seconds taken."""
    access = settings.kafka_access().kafka_python()
    admin = KafkaAdminClient(**access)
    try:
        admin.create_topics([NewTopic(ROUND_TRIP_TOPIC, settings.topic_partitions, settings.replication_factor())])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
    consumer = KafkaConsumer(
        ROUND_TRIP_TOPIC,
        **access,
        group_id=f"bench-{time.time_ns()}",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=500,
        max_poll_records=10_000,
        session_timeout_ms=6000,
        max_poll_interval_ms=10000,
    )
    producer = KafkaProducer(**access, linger_ms=20, batch_size=64 * 1024, acks=1)
    # A first message makes the topic and lets the consumer join before the clock starts.
    producer.send(ROUND_TRIP_TOPIC, key=b"warmup", value=b"warmup").get(timeout=30)
    deadline = time.monotonic() + 60
    seen = 0
    while seen == 0 and time.monotonic() < deadline:
        seen += sum(len(batch) for batch in consumer.poll(timeout_ms=500).values())
    received = 0
    done = threading.Event()

    def consume() -> None:
        nonlocal received
        limit = time.monotonic() + 600
        while received < len(lines) and time.monotonic() < limit:
            received += sum(len(batch) for batch in consumer.poll(timeout_ms=500).values())
        done.set()

    reader = threading.Thread(target=consume)
    started = time.perf_counter()
    reader.start()
    for line in lines:
        producer.send(ROUND_TRIP_TOPIC, key=line.split(b",", 1)[0], value=line)
    producer.flush()
    done.wait()
    took = time.perf_counter() - started
    reader.join()
    producer.close()
    consumer.close()
    if received < len(lines):
        raise RuntimeError(f"raw round trip: received {received} of {len(lines)} messages")
    return took


class _LandingWatch:
    """When the month's last line landed: polls ClickHouse (every 0.2 s) for the rows of
    ``rated_calls`` and ``rejected_cdrs`` (FINAL) beyond those there at the start.

    The issue's figure is "ingest start to the last row landed in ClickHouse"; the
    ``ingest --wait`` command returns ~2 s later (it waits for the alert count to settle).
    """

    def __init__(self, settings: Settings, lines: int):
        from clickhouse_driver import Client

        self.client = Client(**settings.clickhouse_params())
        self.target = self._rows() + lines
        self.landed_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rows(self) -> int:
        return sum(
            self.client.execute(f"SELECT count() FROM {table} FINAL")[0][0] for table in ("rated_calls", "rejected_cdrs")
        )

    def start(self, started: float) -> None:
        self.started = started
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.landed_s is None:
            if self._rows() >= self.target:
                self.landed_s = time.perf_counter() - self.started
            self._stop.wait(0.2)

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        self.client.disconnect()
        return self.landed_s


_RATED = re.compile(
    r"rated (\d+) lines of (\d+) messages .* in ([\d.]+) s(?: \(while the batch before was written\))?; "
    r"(\d+) output messages acknowledged in ([\d.]+) s; state written in ([\d.]+) s"
)
_SUNK = re.compile(r"sink (\w+): (\d+) rows of (\d+) messages decoded in ([\d.]+) s, inserted in ([\d.]+) s")


def _stages(log: Path, start: int) -> dict[str, dict[str, float]]:
    """Seconds per stage from the worker's log lines written since byte ``start``."""
    with log.open("rb") as handle:
        handle.seek(start)
        text = handle.read().decode("utf-8", "replace")
    stages: dict[str, dict[str, float]] = {}

    def add(name: str, seconds: float, count: int, rows: int) -> None:
        stage = stages.setdefault(name, {"seconds": 0.0, "batches": 0, "rows": 0})
        stage["seconds"] = round(stage["seconds"] + seconds, 3)
        stage["batches"] += count
        stage["rows"] += rows

    for lines, _, rated, outputs, acked, state in _RATED.findall(text):
        add("worker: rate a batch (decode, rate, encode)", float(rated), 1, int(lines))
        add("worker: outputs sent and acknowledged", float(acked), 1, int(outputs))
        add("worker: state records and checkpoint written", float(state), 1, int(lines))
    for kind, rows, _, decoded, inserted in _SUNK.findall(text):
        add(f"sink {kind}: decode", float(decoded), 1, int(rows))
        add(f"sink {kind}: insert", float(inserted), 1, int(rows))
    return stages


def _cpu_of_servers(state_dir: Path) -> dict[str, float]:
    """CPU seconds (user + system) each running server of the stack has used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for name in _PROCESSES:
        record = _live_record(state_dir, name)  # the stack's pid file, if its process runs
        if record is None:
            continue
        try:
            fields = Path(f"/proc/{record['pid']}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended since
            continue
        used[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return used


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _print_stages(figures: dict, cdrs: int, ingested: dict) -> None:
    print("where the time goes (seconds summed over the run's batches; stages overlap)")
    print(f"  {'ingest: read, check, route, produce the file':46} {ingested['files'][0]['seconds']:8.2f}")
    for name, stage in figures["stages_s"].items():
        print(f"  {name:46} {stage['seconds']:8.2f}  ({stage['batches']} batches, {stage['rows']:,} rows)")
    print("CPU per process while the month went through (seconds; microseconds per CDR)")
    for name, seconds in sorted(figures["cpu_s"].items(), key=lambda item: -item[1]):
        print(f"  {name:12} {seconds:7.2f}  {figures['cpu_us_per_cdr'][name]:8.1f}")


def _sink_rows_per_s(sink: dict) -> int | None:
    value = sink.get("insert_rows_per_s")  # bench/sink_bench.py --json: median of its runs
    return int(value) if isinstance(value, (int, float)) else None


def _cdrflow(env: dict[str, str], *args: object, check: bool = True) -> str:
    return _run(env, str(BIN / "cdrflow"), *map(str, args), check=check)


def _run(env: dict[str, str], *argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cdrs", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument("--sink-cdrs", type=int, default=1_000_000, help="rated calls of the sink measurement")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
