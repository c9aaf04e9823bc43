"""``cdrflow route --from-topic`` (issue 14): switch lines a log shipper put on a topic of
its own, one per message, routed like ingest routes files.

- The command as a process, with a worker: the lines of a Master.csv produced one per
  message, the first half raw to one topic (its router killed with SIGKILL mid-stream
  and started again), the second half in a JSON envelope to another: the export equals
  ``cdrflow rate`` of the file, line = offset renumbered as the file's line.
- Two routers in one consumer group, taking over from one that died, a position write of
  theirs refused once: every line of a 3-partition topic is judged as ingest judges it
  (same rejection, same account), once.
- The group's leader stopped, then refused a send, each time while another router was
  joining (the group re-forming): the group goes on, every line judged once (tansu 0.6.0
  wedges a group whose leader sends LeaveGroup then, docs/infra.md: the old router did).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import polars as pl
import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from rating import Catalog
from schemas.cdr_csv import parse_csv
from schemas.switch_formats import Feed
from streams.feeds.routing import route
from streams.feeds.shipped import POLL_MS, RouteEvent, ShippedFeed
from streams.kafka.client import BrokerError, make_producer
from streams.offline.generate import generate_dataset
from streams.offline.rate import rate_file
from tariffs import load_tariffs
from tests.conftest import VECTORS
from tests.integration.live_feeds import EdgeProcess, assert_lands_as_offline, edge_output, running
from tests.integration.pipeline import Pipeline

pytestmark = [pytest.mark.integration]

LAND_TIMEOUT_S = 180.0
#: The refusal the routers of these tests are given, as tansu words a real one.
INJECTED = "the broker refused 1 message: [Error -1] UnknownError (injected)"


def _create_topic(pipeline: Pipeline, name: str, partitions: int) -> str:
    topic = pipeline.topic(name)
    admin = KafkaAdminClient(bootstrap_servers=pipeline.settings.kafka_servers())
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
        admin.wait_for_topics([topic], timeout_ms=30_000)
    finally:
        admin.close()
    return topic


def _produce(pipeline: Pipeline, topic: str, values: list[bytes], *, seconds: float = 0.0) -> list[tuple[int, int]]:
    """Send one message per value, unkeyed, in batches of 50 (as shippers do) spread over
    ``seconds``; the (partition, offset) of each.

    (On the embedded broker's s3 store a fetch brings a few dozen produce batches at
    most, so a message per batch would be read at ~60 messages/s.)
    """
    producer = make_producer(pipeline.settings)
    try:
        futures = []
        started = time.monotonic()
        for start in range(0, len(values), 50):
            futures += [producer.send(topic, value=value) for value in values[start : start + 50]]
            producer.flush()
            due = started + seconds * min(len(values), start + 50) / len(values)
            time.sleep(max(0.0, due - time.monotonic()))
        return [(meta.partition, meta.offset) for meta in (f.get(timeout=60) for f in futures)]
    finally:
        producer.close()


class _Timeline:
    """Every router's events, timed, for a failure's message: who did what, when."""

    def __init__(self) -> None:
        self.events: list[tuple[int, RouteEvent]] = []
        self.lines: list[str] = []
        self.began = time.monotonic()

    def of(self, router: int) -> Callable[[RouteEvent], None]:
        def on_event(event: RouteEvent) -> None:
            self.events.append((router, event))
            self.lines.append(
                f"{time.monotonic() - self.began:6.1f} s router {router}: {event.kind} "
                f"[{event.partition}]@{event.next_offset} {event.message}"
            )

        return on_event

    def kinds(self, router: int, kind: str) -> list[RouteEvent]:
        return [event for n, event in self.events if n == router and event.kind == kind]

    def tail(self) -> str:
        return "\n".join(self.lines[-40:])


def _wait_dealt(pipeline: Pipeline, count: int, timeline: _Timeline, *, timeout_s: float) -> None:
    """Until ``count`` lines are on cdr.raw or cdr.rejected (fails with the timeline)."""
    deadline = time.monotonic() + timeout_s
    dealt = 0
    while time.monotonic() < deadline:
        dealt = sum(len(n) for n in edge_output(pipeline).lines_by_source().values())
        if dealt >= count:
            return
        time.sleep(1.0)
    raise AssertionError(f"{dealt} of {count} lines routed within {timeout_s:.0f} s:\n{timeline.tail()}")


def _assert_judged_as_ingest(  # type: ignore[no-untyped-def]
    pipeline: Pipeline, topic: str, where: list[tuple[int, int]], text: list[bytes], tariffs
) -> None:
    """Each line once, judged as ingest judges the file ``text`` (header first): the same
    accepted lines (by account), the same rejections. ``where`` is each message's (partition,
    offset), in the file's order."""
    output = edge_output(pipeline)
    output.assert_each_line_once(sources_in_order=False)
    identity = pl.DataFrame(
        [(f"{topic}[{p}]", offset, n) for n, (p, offset) in enumerate(where, start=1)],
        schema=["source", "line", "file_line"],
        orient="row",
    )
    expected = route(parse_csv(b"\n".join(text) + b"\n"), tariffs.account_of_number(), source="f", ingest_id="i")
    sent = output.raw.join(identity, on=["source", "line"]).select("file_line", "account").sort("file_line")
    assert sent.rows() == expected.accepted.select("line", "account_id").sort("line").rows()
    rejected = output.rejected.unique().join(identity, on=["source", "line"]).select("file_line", "reason")
    assert rejected.sort("file_line").rows() == expected.rejected.select("line", "reason").sort("line").rows()


def test_lines_routed_raw_then_in_json_with_the_router_killed_land_as_the_offline_run(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    data = generate_dataset(tmp_path / "data", cdrs=3_000, accounts=20, month="2026-03", seed=7, cdr_format="asterisk")
    pipeline.load_catalog(data.root)
    rate_file(
        data.cdrs_file,
        Catalog.from_tariffs(load_tariffs(data.plans_dir, data.accounts_file)),
        tmp_path / "offline",
        feed=Feed.of("asterisk"),
    )
    lines = data.cdrs_file.read_bytes().splitlines()
    half = len(lines) // 2
    # Sources sort as the feed goes (the export orders by source, then line).
    raw_topic = _create_topic(pipeline, "feed1.raw", 1)
    json_topic = _create_topic(pipeline, "feed2.json", 1)
    pipeline.start_worker()

    routing = ("route", "--format", "asterisk", "--from-topic")
    first = EdgeProcess.start(pipeline, tmp_path / "route-raw-1.jsonl", *routing, raw_topic)
    try:
        first.wait_for(lambda e: e["event"] == "assigned", timeout_s=60, what="the router joining")
        feeder = threading.Thread(
            target=_produce, args=(pipeline, raw_topic, [line + b"\n" for line in lines[:half]]), kwargs={"seconds": 4.0}
        )
        feeder.start()
        first.wait_for(lambda e: e["event"] == "progress" and e["next_offset"] > 400, timeout_s=60, what="progress")
        time.sleep(0.3)
        first.kill()  # mid-stream, lines sent after its last position
        feeder.join()
    finally:
        first.stop()
    second = EdgeProcess.start(pipeline, tmp_path / "route-raw-2.jsonl", *routing, raw_topic)
    envelope = EdgeProcess.start(
        pipeline, tmp_path / "route-json.jsonl", *routing, json_topic, "--json-field", "message"
    )
    try:
        second.wait_for(lambda e: e["event"] == "progress" and e["next_offset"] == half, timeout_s=90, what="raw routed")
        # The second half, as Vector's JSON codec ships it.
        _produce(
            pipeline,
            json_topic,
            [orjson.dumps({"message": line.decode(), "file": "/var/log/asterisk/cdr-csv/Master.csv", "host": "ast1"}) for line in lines[half:]],
            seconds=2.0,
        )
        pipeline.wait_until(
            lambda c: c["rated_calls"] + c["rejected_cdrs"] >= len(lines), timeout_s=LAND_TIMEOUT_S, what="landing"
        )
    finally:
        assert second.stop() == 0, second.out.read_text()[-3000:]
        assert envelope.stop() == 0, envelope.out.read_text()[-3000:]
    resumed = [e for e in second.events() if e["event"] == "assigned"]
    assert resumed and resumed[0]["next_offset"] > 0, resumed
    edge_output(pipeline).assert_each_line_once()
    # line = offset: the file's line is offset + 1 (+ half for the second topic).
    assert_lands_as_offline(pipeline, tmp_path / "offline", tmp_path, {f"{raw_topic}[0]": 1, f"{json_topic}[0]": half + 1})


class _RefusedOnce(ShippedFeed):
    """A router whose position write may be refused, its lines sent and acknowledged, as
    tansu refuses one of two producers writing a partition at the same moment
    (docs/infra.md): the worst moment, lines out that no position covers. Routers
    sharing ``once`` (a lock never released) are refused once in all: whichever routes
    lines first, however the group shares the partitions."""

    def __init__(self, *args, once: threading.Lock, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.once = once

    def _record(self, partitions, *, force):  # type: ignore[no-untyped-def]
        if not force and any(p.recorded != p.next_offset for p in partitions) and self.once.acquire(blocking=False):
            raise BrokerError(INJECTED)
        super()._record(partitions, force=force)


def test_routers_in_a_group_take_over_and_judge_every_line_as_ingest_once(pipeline: Pipeline) -> None:
    tariffs = pipeline.load_catalog(VECTORS / "mixed")
    text = (VECTORS / "mixed" / "cdrs.csv").read_bytes().splitlines()
    header, lines = text[0], text[1:]
    topic = _create_topic(pipeline, "switch.lines", 3)
    # The shipper sends the header too (it reads the file from its start): no CDR.
    where = _produce(pipeline, topic, [header, *lines])

    dying = ShippedFeed(pipeline.settings, topic, topic_prefix=pipeline.prefix, position_every_s=0.0, max_records=400)
    dying.start()
    while sum(p.next_offset for p in dying.partitions.values()) < 600:
        dying.step()
    dying.position_every_s = 3600.0  # from here on it records nothing
    for _ in range(2):
        dying.step()
    dying._drop()  # gone: its last sends unrecorded (and, as any router, no LeaveGroup: its session expires)
    dying.table.stop()

    stop = threading.Event()
    timeline = _Timeline()
    once = threading.Lock()
    routers = [
        _RefusedOnce(pipeline.settings, topic, topic_prefix=pipeline.prefix, on_event=timeline.of(n), once=once)
        for n in range(2)
    ]
    escaped: list[BaseException] = []
    threads = [running(lambda router=router: router.run(stop, retry_s=0.5), escaped) for router in routers]
    try:
        # ~25 s alone (the dead router's session expires first). Until 2026-12-07 a router
        # refused while the group re-formed left it, and when it led the group that wedged
        # the group on tansu (docs/infra.md): nothing routed for minutes.
        _wait_dealt(pipeline, len(lines), timeline, timeout_s=240)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert escaped == []
    assert all(router.partitions == {} for router in routers)  # both stopped cleanly
    # Reported (a loaded machine may add real refusals, recovered from alike).
    assert once.locked()
    assert f"{INJECTED} (taking its partitions over again in 0.5 s)" in [
        event.message for _, event in timeline.events if event.kind == "error"
    ]
    _assert_judged_as_ingest(pipeline, topic, where, text, tariffs)


class _Held(ShippedFeed):
    """A router the test can hold at the start of a step, before it polls (so it takes no
    part in the group's rebalances, as a router busy reading ``cdr.raw`` back), and whose
    next step it can refuse (raised before that step polls)."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()  # cleared: the next step waits at it
        self.gate.set()
        self.held = threading.Event()
        self.refuse = threading.Event()

    def step(self, timeout_ms: int = POLL_MS) -> int:
        if not self.gate.is_set():
            self.held.set()
            self.gate.wait()
            self.held.clear()
        if self.refuse.is_set():
            self.refuse.clear()
            raise BrokerError(INJECTED)
        return super().step(timeout_ms)


def _until(test: Callable[[], bool], what: str, timeline: _Timeline, *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not test():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s:\n{timeline.tail()}"
        time.sleep(0.05)


def _joining(router: ShippedFeed) -> bool:
    """The broker has taken ``router`` into its group (it handed it a member id: the group
    re-forms from then on)."""
    consumer = router._consumer
    return consumer is not None and bool(consumer.group_metadata().member_id)


def test_the_group_goes_on_when_its_leader_stops_or_is_refused_while_another_router_joins(pipeline: Pipeline) -> None:
    tariffs = pipeline.load_catalog(VECTORS / "mixed")
    text = (VECTORS / "mixed" / "cdrs.csv").read_bytes().splitlines()
    topic = _create_topic(pipeline, "switch.lines", 3)
    third = len(text) // 3
    parts = [text[:third], text[third : 2 * third], text[2 * third :]]  # the header first
    where = _produce(pipeline, topic, parts[0])
    timeline = _Timeline()
    stop = threading.Event()
    escaped: list[BaseException] = []
    threads: list[threading.Thread] = []

    def router(n: int, kind: type[ShippedFeed] = ShippedFeed) -> ShippedFeed:
        return kind(pipeline.settings, topic, topic_prefix=pipeline.prefix, on_event=timeline.of(n))

    first = router(0)
    try:
        # 1. Router 0 alone leads the group and routes the first third.
        first.start()
        deadline = time.monotonic() + 60
        while sum(p.next_offset for p in first.partitions.values()) < third:
            assert time.monotonic() < deadline, f"router 0 routing the first third:\n{timeline.tail()}"
            first.step()
        # Router 1 joins; router 0 stops before the group re-formed (it does not poll again).
        second = router(1, _Held)
        threads.append(running(lambda: second.run(stop, retry_s=0.5), escaped))
        _until(lambda: _joining(second), "router 1 joining", timeline)
        first.close()
        where += _produce(pipeline, topic, parts[1])
        _wait_dealt(pipeline, 2 * third - 1, timeline, timeout_s=120)  # all but the header

        # 2. Router 1 now leads (alone). It is held; router 2 joins; router 1's next step
        # is refused, before it polls: before the group re-formed.
        assert isinstance(second, _Held)
        second.gate.clear()
        _until(second.held.is_set, "router 1 held", timeline)
        other = router(2)
        threads.append(running(lambda: other.run(stop, retry_s=0.5), escaped))
        _until(lambda: _joining(other), "router 2 joining", timeline)
        second.refuse.set()
        second.gate.set()
        # The group re-forms with router 2 in it (before: never), which then routes its share.
        _until(lambda: bool(timeline.kinds(2, "assigned")), "router 2 assigned", timeline, timeout_s=120)
        where += _produce(pipeline, topic, parts[2])
        _wait_dealt(pipeline, len(text) - 1, timeline, timeout_s=120)
    finally:
        first.table.stop()
        first._drop()
        stop.set()
        for thread in threads:
            thread.join(60)
    assert escaped == []
    assert timeline.kinds(1, "assigned"), timeline.tail()  # router 1 took router 0's partitions
    # Reported (a loaded machine may add real refusals, recovered from alike).
    refused = [event.message for event in timeline.kinds(1, "error")]
    assert f"{INJECTED} (taking its partitions over again in 0.5 s)" in refused, timeline.tail()
    _assert_judged_as_ingest(pipeline, topic, where, text, tariffs)
