"""Helpers of the live-feed tests (``ingest --tail``, ``route``): the edge as a process
that can be killed, a switch that writes slowly, and what the edge put on the topics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import polars as pl

from streams.kafka.client import read_to_end
from streams.worker.sinks import read_output
from streams.offline.compare import compare_outputs
from tests.conftest import CDRFLOW
from tests.integration.pipeline import Pipeline


def running(run: Callable[[], None], escaped: list[BaseException]) -> threading.Thread:
    """``run`` started in a thread; what it raises goes to ``escaped`` (an edge's own
    recovery must hold every broker error: a test asserts that nothing escaped)."""

    def target() -> None:
        try:
            run()
        except BaseException as error:
            escaped.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    return thread


#: The reasons judged at the edge (spec 4 steps 1-2); the worker rejects for the others.
EDGE_REASONS = frozenset({"malformed", "unknown_number"})


@dataclass
class EdgeProcess:
    """``cdrflow ARGS --json`` on a pipeline's topics, as a process; its stdout is JSON lines."""

    process: subprocess.Popen
    out: Path

    @classmethod
    def start(cls, pipeline: Pipeline, out: Path, *args: str | Path) -> EdgeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDRFLOW_")}
        env.update(
            CDRFLOW_KAFKA_BOOTSTRAP=pipeline.settings.kafka_bootstrap or "",
            CDRFLOW_CLICKHOUSE_URL=pipeline.settings.clickhouse_url or "",
            CDRFLOW_TOPIC_PREFIX=pipeline.prefix,
            CDRFLOW_STATE_DIR=str(pipeline.settings.state_dir),
        )
        with out.open("ab") as handle:
            process = subprocess.Popen(
                [str(CDRFLOW), *map(str, args), "--json"],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return cls(process, out)

    def events(self) -> list[dict]:
        events = []
        for line in self.out.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def wait_for(self, test, *, timeout_s: float, what: str) -> dict:
        """The first event ``test`` accepts, waiting for it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events():
                if test(event):
                    return event
            assert self.process.poll() is None, f"{what}: the process exited:\n{self.out.read_text()[-4000:]}"
            time.sleep(0.1)
        raise AssertionError(f"{what}: not within {timeout_s:.0f} s:\n{self.out.read_text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL: no flush, no last position."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


def append_slowly(path: Path, lines: Sequence[bytes], *, seconds: float) -> None:
    """Append ``lines`` to ``path`` over about ``seconds``, as a switch does: in small
    groups, the last line of each group written in two halves a moment apart."""
    steps = max(1, int(seconds / 0.05))
    group = max(1, len(lines) // steps)
    with path.open("ab") as handle:
        for start in range(0, len(lines), group):
            part = b"".join(lines[start : start + group])
            cut = len(part) - len(lines[min(start + group, len(lines)) - 1]) // 2
            handle.write(part[:cut])
            handle.flush()
            time.sleep(0.025)
            handle.write(part[cut:])
            handle.flush()
            time.sleep(0.025)


@dataclass(frozen=True)
class EdgeOutput:
    """What an edge put on ``cdr.raw`` and ``cdr.rejected`` (its own rejections only)."""

    #: One row per line sent to cdr.raw: partition, offset, account (the key), source, line.
    raw: pl.DataFrame
    #: One row per rejection sent (copies included): source, line, reason, ingest_id.
    rejected: pl.DataFrame

    def assert_each_line_once(self, *, sources_in_order: bool = True) -> None:
        """No line on cdr.raw twice, none both sent and rejected, and each account's lines
        in the order of their lines in each source, and, when the sources come one after
        the other (a file's generations), in the order of the sources too."""
        repeated = self.raw.group_by("source", "line").len().filter(pl.col("len") > 1)
        assert repeated.height == 0, f"lines sent twice to cdr.raw:\n{repeated}"
        both = self.raw.join(self.rejected, on=["source", "line"], how="inner")
        assert both.height == 0, f"lines both sent and rejected:\n{both}"
        # Rejection copies (a line judged again after a restart) are equal: they collapse.
        copies = self.rejected.unique().group_by("source", "line").len().filter(pl.col("len") > 1)
        assert copies.height == 0, f"a rejected line with two different rows:\n{copies}"
        ordered = self.raw.sort("partition", "offset", maintain_order=True)
        for (account,), lines in ordered.partition_by("account", as_dict=True, maintain_order=True).items():
            keys = list(zip(lines.get_column("source").to_list(), lines.get_column("line").to_list(), strict=True))
            if not sources_in_order:  # partitions of a topic go side by side
                keys = sorted(keys, key=lambda key: key[0])  # stable: each source's own order kept
            assert keys == sorted(keys), f"account {account}: lines out of order"

    def lines_by_source(self) -> dict[str, set[int]]:
        """Every line the edge dealt with (sent or rejected), by source."""
        every = pl.concat([self.raw.select("source", "line"), self.rejected.select("source", "line")])
        return {
            source: set(group.get_column("line").to_list())
            for (source,), group in every.partition_by("source", as_dict=True).items()
        }


def edge_output(pipeline: Pipeline) -> EdgeOutput:
    raw_rows: list[tuple[int, int, str, str, int]] = []
    for record in read_to_end(pipeline.settings, pipeline.topic("cdr.raw")):
        value = orjson.loads(record.value)
        if "line" not in value:
            continue  # a ledger command (cdrflow load's opening balances)
        account = record.key.decode()
        raw_rows += [(record.partition, record.offset, account, value["source"], n) for n in value["line"]]
    rejected_rows: list[tuple[str, int, str, str]] = []
    for record in read_to_end(pipeline.settings, pipeline.topic("cdr.rejected")):
        # The feeds' rejections are JSON, the worker's Arrow: read_output reads both.
        rows = read_output(record.value, "rejected")
        rejected_rows += [
            row
            for row in rows.select("source", "line", "reason", "ingest_id").iter_rows()
            if row[2] in EDGE_REASONS  # the worker's own rejections (duplicate, no_rate, ...) go there too
        ]
    return EdgeOutput(
        raw=pl.DataFrame(
            raw_rows, schema=["partition", "offset", "account", "source", "line"], orient="row"
        ),
        rejected=pl.DataFrame(rejected_rows, schema=["source", "line", "reason", "ingest_id"], orient="row"),
    )


def renumbered(frame: pl.DataFrame, shift: dict[str, int]) -> pl.DataFrame:
    """``line`` as a line of the concatenated feed: each source's lines shifted by its
    offset in ``shift`` (``file`` or ``source`` names the source)."""
    column = "file" if "file" in frame.columns else "source"
    shifts = pl.col(column).replace_strict(shift, default=0, return_dtype=pl.Int64)
    return frame.with_columns((pl.col("line").cast(pl.Int64) + shifts).alias("line"))


def assert_lands_as_offline(pipeline: Pipeline, offline: Path, work: Path, shift: dict[str, int]) -> None:
    """The export equals the offline run of the concatenated feed (shared/tools/compare_rating.py),
    once each source's lines are renumbered as lines of it (``shift``); rated rows too
    carry the line of the offline run."""
    exported = pipeline.export(work / "export")
    rejected = pl.read_csv(exported / "rejected.csv", infer_schema=False)
    assert set(rejected.get_column("file")) <= set(shift), set(rejected.get_column("file"))
    renumbered(rejected, shift).write_csv(exported / "rejected.csv")
    compared = compare_outputs(offline, exported)
    assert compared.ok, compared.report()
    client = pipeline.client()
    try:
        rows = client.execute("SELECT source, line, account_id, cdr_id FROM rated_calls FINAL")
    finally:
        client.disconnect()
    streamed = renumbered(pl.DataFrame(rows, schema=["source", "line", "account_id", "cdr_id"], orient="row"), shift)
    want = pl.read_csv(offline / "rated.csv", infer_schema=False).select(
        pl.col("line").cast(pl.Int64), "account_id", "cdr_id"
    )
    assert streamed.select("line", "account_id", "cdr_id").sort("line").equals(want.sort("line"))
