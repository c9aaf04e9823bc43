"""Latency of a live feed: a line appended to a Master.csv, to its rated row in ClickHouse
and to its alert's webhook POST, with ``cdrflow ingest --tail`` and a worker running.

On a throwaway embedded stack (temporary state folder, free ports):

1. a month of Asterisk traffic is generated (``--accounts`` accounts, each with a small
   daily cap so that ``daily_cap_reached`` alerts come often), loaded, and rated offline
   once to know which lines end as rated calls;
2. a worker runs with ``CDRFLOW_ALERT_WEBHOOK`` pointing at a local HTTP receiver, and
   ``cdrflow ingest --tail Master.csv --format asterisk`` follows an empty Master.csv; a
   warm-up of 500 lines is appended and waited for (group joins are not latency);
3. for each rate of ``--rates`` (lines/s), lines are appended for ``--seconds`` at that
   steady rate (every 10 ms, the lines due by then, flushed); the time each line's bytes
   reached the file is kept;
4. ClickHouse is polled every 0.1 s for the rated rows of the lines in flight
   (``rated_calls`` by source and line), and the receiver notes when each alert is
   POSTed (its body names the source and line of its call).

Printed per rate: p50 / p99 / max of append -> rated row in ClickHouse (so up to 0.1 s
of polling on top) and append -> webhook POST. Target (issue 14): p99 append -> landed
under 5 s at 2,000 lines/s.

Usage::

    .venv/bin/python bench/latency_bench.py                       # 200 and 2,000 lines/s, 60 s each
    .venv/bin/python bench/latency_bench.py --rates 500 --seconds 20 --json
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Runnable from a plain checkout too, not only from an installed project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rtoml  # noqa: E402

from streams.offline.generate import generate_dataset  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.stack import servers as stack  # noqa: E402
from streams.stack.processes import _clean_env  # noqa: E402

BIN = Path(sys.executable).parent
WARMUP_LINES = 500
#: A daily cap most accounts reach on most days: alerts to time.
DAILY_CAP = "1.0000"
TARGET_P99_S = 5.0
#: Seconds at the start of a phase left out of the "settled" figures.
SETTLING_S = 15.0
TARGET_RATE = 2_000


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    say = (lambda _: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    needed = WARMUP_LINES + sum(rate * args.seconds for rate in args.rates)
    results: list[dict] = []
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    folder = (
        contextlib.nullcontext(tempfile.mkdtemp(prefix="cdrflow-latency-bench-", dir=args.keep))
        if args.keep is not None
        else tempfile.TemporaryDirectory(prefix="cdrflow-latency-bench-")
    )
    with folder as tmp:
        root = Path(tmp)
        receiver = _Receiver()
        env = _stack_env(root, receiver.url)
        memory_broker = _memory_broker(env) if args.broker == "memory" else None
        os.environ.update(env)
        settings = Settings()
        tail: subprocess.Popen | None = None
        watch: _LandingWatch | None = None
        try:
            say("starting the stack ...")
            _cdrflow(env, "up")
            say(f"generating {needed:,} CDRs over {args.accounts:,} accounts ...")
            data = generate_dataset(
                root / "data", cdrs=needed, accounts=args.accounts, month="2026-03", seed=5, cdr_format="asterisk"
            )
            _cap_every_account(data.accounts_file)
            lines = data.cdrs_file.read_bytes().splitlines(keepends=True)
            rated_lines = _rated_lines(data, root / "offline")
            _cdrflow(env, "load", "--plans", data.plans_dir, "--accounts", data.accounts_file)
            # info: each batch's figures in the worker's log (state/logs/worker.log, --keep)
            stack.start_worker(settings, loglevel="info")
            master = root / "spool" / "Master.csv"
            master.parent.mkdir()
            master.touch()
            out = root / "tail.jsonl"
            with out.open("wb") as handle:
                tail = subprocess.Popen(
                    [str(BIN / "cdrflow"), "ingest", "--tail", str(master), "--format", "asterisk", "--json"],
                    env=env, stdout=handle, stderr=subprocess.STDOUT,
                )  # fmt: skip
            source = _source_of(out, tail)
            watch = _LandingWatch(settings, source)
            say(f"warm-up: {WARMUP_LINES} lines ...")
            expect = lambda numbers: watch.expect([n for n in numbers if n in rated_lines])  # noqa: E731
            written = _append(master, lines[:WARMUP_LINES], rate=1_000, on_written=expect)
            watch.wait_for([n for n in written if n in rated_lines], timeout_s=300)
            watch.settle()  # the load's opening balances and the warm-up's outputs, all landed
            first = WARMUP_LINES
            for rate in args.rates:
                batch = lines[first : first + rate * args.seconds]
                say(f"{rate:,} lines/s for {args.seconds} s ...")
                appended = _append(master, batch, rate=rate, first_line=first + 1, on_written=expect)
                wanted = [n for n in appended if n in rated_lines]
                landed = watch.wait_for(wanted, timeout_s=600)
                settled = min(appended.values()) + SETTLING_S
                time.sleep(2.0)  # the last alerts' POSTs
                alerts = [
                    receiver.received[key] - appended[key[1]]
                    for key in list(receiver.received)
                    if key[0] == source and key[1] in appended
                ]
                results.append(
                    {
                        "rate": rate,
                        "seconds": args.seconds,
                        "lines": len(appended),
                        "rated_lines_timed": len(landed),
                        "rated_lines_missing": len(wanted) - len(landed),
                        "to_clickhouse_s": _percentiles([landed[n] - appended[n] for n in landed]),
                        # after the first SETTLING_S of the phase: the worker's batches have
                        # grown to the rate (from idle, the first ones are small)
                        "to_clickhouse_settled_s": _percentiles(
                            [landed[n] - appended[n] for n in landed if appended[n] >= settled]
                        ),
                        "alerts_timed": len(alerts),
                        "to_webhook_s": _percentiles(alerts),
                    }
                )
                results[-1]["stages_s"] = _stages(settings, source, appended, landed)
                first += len(batch)
        finally:
            if tail is not None and tail.poll() is None:
                tail.send_signal(signal.SIGTERM)
                tail.wait(timeout=60)
            _cdrflow(env, "down", check=False)
            if watch is not None:
                watch.close()
            if memory_broker is not None:
                memory_broker.terminate()
                memory_broker.wait(timeout=30)
            receiver.close()
    at_target = [r for r in results if r["rate"] >= TARGET_RATE]
    met = bool(at_target) and all(
        r["to_clickhouse_s"]["p99"] is not None and r["to_clickhouse_s"]["p99"] < TARGET_P99_S and not r["rated_lines_missing"]
        for r in at_target
    )
    if args.json:
        print(json.dumps({"accounts": args.accounts, "broker": args.broker, "results": results, "target_met": met}, indent=2))
    else:
        print(
            f"append -> landed, {args.accounts:,} accounts, ingest --tail + one worker, embedded stack "
            f"(broker store: {args.broker})"
        )
        print(
            f"{'rate':>7} {'lines':>8}   {'to ClickHouse p50 / p99 / max':>30}   "
            f"{f'same after {SETTLING_S:.0f} s':>24}   {'to webhook p50 / p99 / max (alerts)':>40}"
        )
        for r in results:
            ch, hook = r["to_clickhouse_s"], r["to_webhook_s"]
            hook_text = f"{_fmt(hook)} ({r['alerts_timed']:,})"
            print(
                f"{r['rate']:>7,} {r['lines']:>8,}   {_fmt(ch):>30}   {_fmt(r['to_clickhouse_settled_s']):>24}   "
                f"{hook_text:>40}"
                + (f"   {r['rated_lines_missing']} rated lines never seen" if r["rated_lines_missing"] else "")
            )
        for r in results:
            print(f"stages at {r['rate']:,} lines/s, p50 / p99 / max:")
            for stage, figures in r["stages_s"].items():
                print(f"  {stage:<44} {_fmt(figures)}")
        verdict = "PASS" if met else "FAIL"
        print(f"target: p99 append -> landed < {TARGET_P99_S:.0f} s at {TARGET_RATE:,} lines/s: {verdict}")
    return 0 if met else 1


# ------------------------------------------------------------------------ the feed


def _cap_every_account(accounts_file: Path) -> None:
    """A small daily cap on every account: daily_cap_reached alerts on most account-days."""
    accounts = rtoml.load(accounts_file)
    for account in accounts["accounts"]:
        account["daily_cap"] = DAILY_CAP
    accounts_file.write_text(rtoml.dumps(accounts))


def _rated_lines(data, out: Path) -> set[int]:
    """Lines of the Master.csv that the offline run rates (rejected lines land elsewhere)."""
    import polars as pl

    from rating import Catalog
    from schemas.switch_formats import Feed
    from streams.offline.rate import rate_file
    from tariffs import load_tariffs

    rate_file(data.cdrs_file, Catalog.from_tariffs(load_tariffs(data.plans_dir, data.accounts_file)), out, feed=Feed.of("asterisk"))
    return set(pl.read_csv(out / "rated.csv", columns=["line"]).get_column("line").to_list())


def _append(
    master: Path, lines: list[bytes], *, rate: int, first_line: int = 1, on_written=lambda numbers: None
) -> dict[int, float]:
    """Append lines at ``rate`` lines/s (each 10 ms, those due); line number -> when its
    bytes were in the file (time.monotonic). ``on_written(numbers)`` after each write."""
    appended: dict[int, float] = {}
    started = time.monotonic()
    written = 0
    with master.open("ab") as handle:
        while written < len(lines):
            due = min(len(lines), int((time.monotonic() - started) * rate) + 1)
            if due > written:
                handle.write(b"".join(lines[written:due]))
                handle.flush()
                now = time.monotonic()
                numbers = range(first_line + written, first_line + due)
                for number in numbers:
                    appended[number] = now
                on_written(list(numbers))
                written = due
            time.sleep(0.01)
    return appended


def _source_of(out: Path, tail: subprocess.Popen, timeout_s: float = 120.0) -> str:
    """The tailed generation's source, from the tail's first ``following`` event."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "following":
                return json.loads(line)["source"]
        if tail.poll() is not None:
            raise SystemExit(f"cdrflow ingest --tail exited:\n{out.read_text()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit("cdrflow ingest --tail did not start following within 120 s")


# ------------------------------------------------------------------------ the watchers


class _LandingWatch:
    """When each line's rated row appeared in ClickHouse: a thread polls every 0.1 s for the
    lines in flight, *while* they are appended (polling after would time the poll)."""

    def __init__(self, settings: Settings, source: str):
        from clickhouse_driver import Client

        self.params = settings.clickhouse_params()
        self.client = Client(**self.params)
        self.source = source
        self.seen: dict[int, float] = {}
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def expect(self, lines: list[int]) -> None:
        """Lines just appended whose rated rows are to be timed."""
        with self._lock:
            self._pending.update(lines)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                low, high = (min(self._pending), max(self._pending)) if self._pending else (None, None)
            if low is not None:
                rows = self.client.execute(
                    "SELECT DISTINCT line FROM rated_calls WHERE source = %(source)s "
                    "AND line >= %(low)s AND line <= %(high)s",
                    {"source": self.source, "low": low, "high": high},
                )
                now = time.monotonic()
                with self._lock:
                    for (line,) in rows:
                        if line in self._pending:
                            self._pending.discard(line)
                            self.seen[line] = now
            self._stop.wait(0.1)

    def wait_for(self, lines: list[int], *, timeout_s: float) -> dict[int, float]:
        """The landing times of ``lines``, once all are seen (or the timeout passed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(n not in self.seen for n in lines):
            time.sleep(0.2)
        return {n: self.seen[n] for n in lines if n in self.seen}

    def settle(self, quiet_s: float = 5.0, timeout_s: float = 300.0) -> None:
        """Wait until the ledger's tables have not grown for ``quiet_s``."""
        from clickhouse_driver import Client

        client = Client(**self.params)  # the thread has the other one
        query = "SELECT (SELECT count() FROM account_balances) + (SELECT count() FROM billing_events)"
        last, since = None, time.monotonic()
        deadline = since + timeout_s
        while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
            count = client.execute(query)[0][0]
            if count != last:
                last, since = count, time.monotonic()
            time.sleep(0.5)
        client.disconnect()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.disconnect()


class _Receiver:
    """A local webhook: when each alert was POSTed, by (source, line, kind)."""

    def __init__(self) -> None:
        self.received: dict[tuple[str, int, str], float] = {}
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            # Keeps connections alive, as any web server or webhook service does (http.server
            # answers HTTP/1.0 and closes by default: each alert then cost the worker a TCP
            # connect and close, ~a tenth of its event loop at 2,000 lines/s).
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.setdefault((body.get("source"), body.get("line"), body.get("kind")), time.monotonic())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128  # a web server's backlog (socketserver's default is 5)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------ figures


def _stages(settings: Settings, source: str, appended: dict[int, float], landed: dict[int, float]) -> dict:
    """Where a line's time went: its append, its ``cdr.raw`` message's send by the tail
    (the record's CreateTime), the send of its rated row's ``billing.events`` message by
    the worker, its row seen in ClickHouse. Read back from the topics after the phase."""
    import orjson

    from streams.kafka.client import read_to_end
    from streams.worker.sinks import read_output

    to_monotonic = time.monotonic() - time.time()  # CreateTime is wall-clock ms
    raw_sent: dict[int, float] = {}
    for record in read_to_end(settings, "cdr.raw", timeout_s=300):
        value = orjson.loads(record.value)
        if value.get("source") == source:
            for line in value["line"]:
                raw_sent.setdefault(line, record.timestamp / 1000 + to_monotonic)
    rated_sent: dict[int, float] = {}
    for record in read_to_end(settings, "billing.events", timeout_s=300):
        rows = read_output(record.value, "rated")  # Arrow IPC (schemas.messages.frame_bytes)
        if "source" not in rows.columns or "line" not in rows.columns:
            continue  # ledger events
        for row_source, line in rows.select("source", "line").iter_rows():
            if row_source == source:
                rated_sent.setdefault(line, record.timestamp / 1000 + to_monotonic)
    timed = [n for n in landed if n in raw_sent and n in rated_sent]
    return {
        "append -> cdr.raw (ingest --tail)": _percentiles([raw_sent[n] - appended[n] for n in timed]),
        "cdr.raw -> billing.events (worker: fetch, batch, rate)": _percentiles([rated_sent[n] - raw_sent[n] for n in timed]),
        "billing.events -> ClickHouse (ack, sink, poll)": _percentiles([landed[n] - rated_sent[n] for n in timed]),
    }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1], 3)}


def _fmt(figures: dict[str, float | None]) -> str:
    if figures["p50"] is None:
        return "-"
    return f"{figures['p50']:.2f} / {figures['p99']:.2f} / {figures['max']:.2f} s"


def _memory_broker(env: dict[str, str]) -> subprocess.Popen:
    """The stack's tansu broker on its memory store (nothing durable), as an external Kafka."""
    port = stack.free_ports(1)[0]
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen(
        [str(stack._tansu_bin(Settings())), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        env=_clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env["CDRFLOW_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{port}"
    return broker


def _stack_env(root: Path, webhook: str) -> dict[str, str]:
    ports = stack.free_ports(4)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("CDRFLOW_KAFKA_BOOTSTRAP", "CDRFLOW_CLICKHOUSE_URL")},
        "CDRFLOW_STATE_DIR": str(root / "state"),
        "CDRFLOW_KAFKA_PORT": str(ports[0]),
        "CDRFLOW_CLICKHOUSE_TCP_PORT": str(ports[1]),
        "CDRFLOW_CLICKHOUSE_HTTP_PORT": str(ports[2]),
        "CDRFLOW_S3_PORT": str(ports[3]),
        "CDRFLOW_ALERT_WEBHOOK": webhook,
    }
    return env


def _cdrflow(env: dict[str, str], *args: object, check: bool = True) -> str:
    done = subprocess.run([str(BIN / "cdrflow"), *map(str, args)], env=env, capture_output=True, text=True, timeout=1800)
    if check and done.returncode != 0:
        raise SystemExit(f"cdrflow {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (the worker's log among it)")
    parser.add_argument("--rates", type=lambda text: [int(r) for r in text.split(",")], default=[200, 2_000],
                        help="lines/s of each phase, comma-separated (default 200,2000)")  # fmt: skip
    parser.add_argument("--seconds", type=int, default=60, help="length of each phase")
    parser.add_argument("--accounts", type=int, default=2_000)
    parser.add_argument(
        "--broker", choices=("s3", "memory"), default="s3",
        help="the embedded broker's store: s3 (durable, what `cdrflow up` runs) or memory",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
