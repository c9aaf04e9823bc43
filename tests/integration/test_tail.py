"""``cdrflow ingest --tail`` (issue 14): a Master.csv that is still growing, rotated, with
the tailing process killed.

- In process, step by step: a tail that dies after sending lines it never recorded, while
  its file is rotated, is resumed by another: every line reaches the topics once, in
  order, the rotated file found again by its inode.
- In process, running: a tail refused a position write once, after sends no position
  covered, reports it and resumes by itself: every line once, in order.
- The command as a process: a Master.csv written line by line (half-written lines
  included), the ingest process killed with SIGKILL, the file rotated while it is down,
  a worker rating all along: the export equals ``cdrflow rate`` of the concatenated file,
  each generation's lines renumbered as lines of it.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from rating import Catalog
from schemas.switch_formats import Feed
from streams.feeds.ingest import ingested_files
from streams.feeds.tail import Tailer, TailEvent
from streams.kafka.client import BrokerError
from streams.offline.generate import generate_dataset
from streams.offline.rate import rate_file
from tariffs import load_tariffs
from tests.conftest import VECTORS
from tests.integration.live_feeds import (
    EdgeProcess,
    append_slowly,
    assert_lands_as_offline,
    edge_output,
    running,
)
from tests.integration.pipeline import Pipeline

pytestmark = [pytest.mark.integration]

LAND_TIMEOUT_S = 180.0


def _master_csv(tmp_path: Path, pipeline: Pipeline, *, cdrs: int, accounts: int, seed: int) -> list[bytes]:
    data = generate_dataset(tmp_path / "data", cdrs=cdrs, accounts=accounts, month="2026-03", seed=seed, cdr_format="asterisk")
    pipeline.load_catalog(data.root)
    rate_file(
        data.cdrs_file,
        Catalog.from_tariffs(load_tariffs(data.plans_dir, data.accounts_file)),
        tmp_path / "offline",
        feed=Feed.of("asterisk"),
    )
    return data.cdrs_file.read_bytes().splitlines(keepends=True)


def test_a_tail_that_died_after_sending_is_resumed_without_a_line_twice(pipeline: Pipeline, tmp_path: Path) -> None:
    lines = _master_csv(tmp_path, pipeline, cdrs=1_200, accounts=40, seed=11)
    spool = tmp_path / "spool"
    spool.mkdir()
    master = spool / "Master.csv"
    master.write_bytes(b"".join(lines[:300]) + lines[300][:40])  # the last line half-written
    feed = Feed.of("asterisk")

    # Positions only when forced (a generation's start): whatever it sends after is unrecorded.
    first = Tailer(pipeline.settings, [master], feed, topic_prefix=pipeline.prefix, position_every_s=3600)
    first.start()
    first.step()
    (generation,) = first.generations.values()
    assert generation.next_line == 301  # the half-written line waits
    with master.open("ab") as handle:
        handle.write(lines[300][40:] + b"".join(lines[301:600]))
    master.rename(spool / "Master.csv.1")  # rotated...
    master.write_bytes(b"".join(lines[600:700]))  # ...and the switch goes on in a new one
    first.step()
    assert generation.next_line == 601 and generation.rotated_since is not None
    first_source = generation.source
    # Killed: no close, no position after the start.
    first._drop()
    first.table.stop()
    master.write_bytes(master.read_bytes() + b"".join(lines[700:900]))

    events: list[TailEvent] = []
    second = Tailer(
        pipeline.settings, [master], feed, topic_prefix=pipeline.prefix, on_event=events.append, settle_s=0.2
    )
    second.start()
    resumed = second.generations[master.absolute()]
    assert (resumed.source, resumed.next_line) == (first_source, 1)
    already = len(resumed.skip)
    assert already > 500  # the lines the first sent (not its rejections)
    stop = threading.Event()
    try:
        for _ in range(40):
            second.step()
            current = second.generations.get(master.absolute())
            if any(e.kind == "rotated" for e in events) and current is not None and current.next_line > 200:
                break
            stop.wait(0.1)
        with master.open("ab") as handle:
            handle.write(b"".join(lines[900:]))
        for _ in range(3):
            second.step()
    finally:
        second.close()
        second.table.stop()

    (rotated,) = [e for e in events if e.kind == "rotated"]
    assert rotated.source == first_source and rotated.tally is not None
    assert rotated.tally.lines == 600 and rotated.tally.skipped == already
    output = edge_output(pipeline)
    output.assert_each_line_once()
    by_source = output.lines_by_source()
    (new_source,) = set(by_source) - {first_source}
    assert by_source == {first_source: set(range(1, 601)), new_source: set(range(1, 601))}
    # The rotated generation is recorded like an ingested file: `cdrflow ingest Master.csv.1` is refused.
    recorded = ingested_files(pipeline.settings, topic_prefix=pipeline.prefix)
    assert recorded[rotated_sha256(spool / "Master.csv.1")]["name"] == first_source


class _RefusedOnce(Tailer):
    """A tail whose first timed position write is refused (as tansu refuses one of two
    producers writing a partition at the same moment, docs/infra.md), its lines sent."""

    refused = False

    def _record(self, *, force: bool, only=None, done: bool = False) -> None:  # type: ignore[no-untyped-def]
        if not self.refused and not force and self.generations:
            self.refused = True
            raise BrokerError("the broker refused 1 message: [Error -1] UnknownError (injected)")
        super()._record(force=force, only=only, done=done)


def test_a_tail_refused_a_send_reports_it_and_resumes_by_itself(pipeline: Pipeline, tmp_path: Path) -> None:
    lines = _master_csv(tmp_path, pipeline, cdrs=900, accounts=30, seed=13)
    master = tmp_path / "Master.csv"
    master.write_bytes(b"".join(lines[:400]))
    events: list[TailEvent] = []
    tailer = _RefusedOnce(
        pipeline.settings, [master], Feed.of("asterisk"), topic_prefix=pipeline.prefix, on_event=events.append,
        position_every_s=0.0,
    )
    stop = threading.Event()
    escaped: list[BaseException] = []
    thread = running(lambda: tailer.run(stop, retry_s=0.2), escaped)
    try:
        for _ in range(600):
            if tailer.refused:
                break
            stop.wait(0.1)
        with master.open("ab") as handle:
            handle.write(b"".join(lines[400:]))
        for _ in range(600):
            progress = [e for e in events if e.kind == "progress" and e.next_line > len(lines)]
            if progress:
                break
            stop.wait(0.1)
    finally:
        stop.set()
        thread.join(60)
    assert escaped == [] and tailer.refused
    # Reported (a loaded machine may add real refusals, recovered from alike).
    errors = [e.message for e in events if e.kind == "error"]
    assert "the broker refused 1 message: [Error -1] UnknownError (injected) (resuming in 0.2 s)" in errors
    output = edge_output(pipeline)
    output.assert_each_line_once()
    assert list(output.lines_by_source().values()) == [set(range(1, len(lines) + 1))]


def rotated_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_canonical_file_truncated_in_place_is_finished_from_its_copy(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.load_catalog(VECTORS / "mixed")
    header, *body = (VECTORS / "mixed" / "cdrs.csv").read_bytes().splitlines(keepends=True)
    spool = tmp_path / "spool"
    spool.mkdir()
    cdrs = spool / "cdrs.csv"
    cdrs.write_bytes(header + b"".join(body[:1_000]))
    events: list[TailEvent] = []
    tailer = Tailer(pipeline.settings, [cdrs], Feed.canonical(), topic_prefix=pipeline.prefix, on_event=events.append)
    tailer.start()
    try:
        tailer.step()
        # logrotate's copytruncate: the copy also holds what was written since the last read.
        (spool / "cdrs.csv.1").write_bytes(cdrs.read_bytes() + b"".join(body[1_000:1_500]))
        cdrs.write_bytes(b"")  # emptied in place: same inode
        tailer.step()
        cdrs.write_bytes(header + b"".join(body[1_500:]))
        tailer.step()
        tailer.step()
    finally:
        tailer.close()
        tailer.table.stop()
    (truncated,) = [e for e in events if e.kind == "truncated"]
    assert "its copy cdrs.csv.1 was read to its end" in truncated.message
    assert truncated.tally is not None and truncated.tally.lines == 1_500
    output = edge_output(pipeline)
    output.assert_each_line_once()
    # Physical lines of each file: the header is line 1 and no CDR.
    (new_source,) = set(output.lines_by_source()) - {truncated.source}
    assert output.lines_by_source() == {
        truncated.source: set(range(2, 1_502)),
        new_source: set(range(2, len(body) - 1_500 + 2)),
    }


def test_a_growing_master_csv_rotated_with_the_tail_killed_lands_as_the_offline_run(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    lines = _master_csv(tmp_path, pipeline, cdrs=3_000, accounts=20, seed=7)
    spool = tmp_path / "spool"
    spool.mkdir()
    master = spool / "Master.csv"
    master.touch()
    pipeline.start_worker()
    tail_args = ("ingest", "--tail", master, "--format", "asterisk")
    first = EdgeProcess.start(pipeline, tmp_path / "tail-1.jsonl", *tail_args)
    try:
        first.wait_for(lambda e: e["event"] == "following", timeout_s=60, what="the tail starting")
        writer = threading.Thread(target=append_slowly, args=(master, lines[:1_000]), kwargs={"seconds": 4.0})
        writer.start()
        # Killed mid-file, a moment after it recorded a position: lines sent since are unrecorded.
        first.wait_for(lambda e: e["event"] == "progress" and e["next_line"] > 400, timeout_s=60, what="progress")
        threading.Event().wait(0.3)
        first.kill()
        writer.join()
    finally:
        first.stop()
    # While it is down the switch goes on, and the file is rotated.
    append_slowly(master, lines[1_000:1_500], seconds=0.5)
    master.rename(spool / "Master.csv.1")
    append_slowly(master, lines[1_500:1_800], seconds=0.5)

    second = EdgeProcess.start(pipeline, tmp_path / "tail-2.jsonl", *tail_args)
    try:
        resumed = second.wait_for(lambda e: e["event"] == "following", timeout_s=60, what="the tail resuming")
        assert "rotated away" in resumed["message"], resumed
        append_slowly(master, lines[1_800:], seconds=3.0)
        second.wait_for(
            lambda e: e["event"] == "progress" and e["next_line"] == len(lines) - 1_500 + 1,
            timeout_s=60,
            what="the tail reaching the end",
        )
        pipeline.wait_until(
            lambda c: c["rated_calls"] + c["rejected_cdrs"] >= len(lines), timeout_s=LAND_TIMEOUT_S, what="landing"
        )
    finally:
        assert second.stop() == 0, second.out.read_text()[-3000:]
    events = second.events()
    (rotated,) = [e for e in events if e["event"] == "rotated"]
    assert rotated["lines"] == 1_500
    (new,) = [e for e in events if e["event"] == "following" and e["source"] != rotated["source"]]
    edge_output(pipeline).assert_each_line_once()
    assert_lands_as_offline(
        pipeline, tmp_path / "offline", tmp_path, {rotated["source"]: 0, new["source"]: 1_500}
    )
