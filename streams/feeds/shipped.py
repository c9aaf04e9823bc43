"""``cdrflow route --from-topic TOPIC``: switch lines a log shipper put on a topic of its
own, framed and routed onto ``cdr.raw`` / ``cdr.rejected`` exactly as ingest does.

Many platforms ship every line of the switch's CSV to Kafka with a log shipper (Vector,
Fluent Bit, Filebeat): one message per line, the raw line or a JSON envelope
(``schemas.shipped_lines``), keyed by nothing useful. :class:`ShippedFeed` consumes such a
topic in a consumer group (several routers share its partitions, beside the workers),
frames each partition's lines with the feed's format, judges and sends them like
``cdrflow ingest`` (streams.feeds.live).

**Line identity.** A routed line is ``source`` = ``TOPIC[PARTITION]`` and ``line`` = its
offset: where to find the message again (``kcat -t TOPIC -p PARTITION -o OFFSET -c 1``).
All lines of a router share one ``ingest_id``, ``route-<TOPIC>``.

**Order.** An account's calls are rated in the order they reach ``cdr.raw``: for one
partition of the foreign topic, its offset order. Lines of one switch file must stay in
one partition (one partition, or a message key that names the file) for that order to be
the file's.

**Effectively once across kill -9** (streams.feeds.positions): after a poll's sends are
acknowledged, each partition's position (next offset, ``cdr.raw`` ends) is written to
``ingest.positions`` (at most every ``position_every_s``) and then the group's offset is
committed. A router that gets a partition reads its position and the committed offset,
starts at the later of the two, reads ``cdr.raw`` back from the position's ends and skips
the lines of the partition it finds there: sent by the previous owner after its last
position, before it died or lost the partition.

**Refusals and a broker away.** When a send is refused (two producers writing one
partition at the same moment on tansu, docs/infra.md) or the broker stops answering, the
sends in flight may or may not have landed: the router reports it (``error``), lets go of
its sender and of what it knew of its partitions, waits, and takes the partitions the
group still gives it over again, as a restart would. It stays in the group: leaving would
make every router rebalance, and on tansu 0.6.0 a leader that leaves while its group
re-forms wedges the group until the broker restarts (docs/infra.md). For the same reason
it never sends LeaveGroup, not even when it stops
(:func:`streams.kafka.client.without_leave_group`): its partitions move when its session
expires (6 s), as after a kill -9. A line whose send was refused while later lines of its
partition landed is sent again after them.

**Header formats.** A line of a canonical (or header-naming profile's) feed that reads as
its header line names the columns for the lines after it on that partition (and is no
CDR); it is kept with the position. A canonical partition without one reads the columns
in the canonical order; a profile that names columns rejects lines until it sees one.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import polars as pl
from aiokafka.errors import KafkaError as AioKafkaError
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from schemas.cdr_csv import HeaderError
from schemas.columns import CDR_COLUMNS
from schemas.shipped_lines import field_path, message_lines
from schemas.switch_formats import Feed, Layout
from schemas.topics import ACCOUNTS, PLANS
from streams.catalog.routing_table import RoutingTable
from streams.feeds.ingest import NothingLoaded
from streams.feeds.live import LIVE_LINGER_MS, LiveTopics, Tally, report_warnings, send_batch
from streams.feeds.positions import (
    Position,
    PositionBook,
    held_ends,
    now_text,
    reported_raw_ends,
    route_key,
    sent_lines,
)
from streams.kafka.client import (
    BOOTSTRAP_TIMEOUT_S,
    BrokerError,
    Sender,
    make_producer,
    make_reader,
    require_topics,
    topic_name,
    unreachable,
    without_leave_group,
)
from streams.settings import Settings

POLL_MS: Final[int] = 200
MAX_RECORDS: Final[int] = 5_000
POSITION_EVERY_S: Final[float] = 1.0
#: The wait before taking its partitions over again after a refused send or a broker away,
#: doubling up to RETRY_MAX_S.
RETRY_S: Final[float] = 1.0
RETRY_MAX_S: Final[float] = 30.0
#: How long the group's coordinator may take to answer a commit or an offset fetch (then:
#: an error, recovered from as any other).
GROUP_TIMEOUT_MS: Final[int] = 30_000

RouteEventKind = Literal["assigned", "revoked", "progress", "error", "warning"]


def default_group(topic: str) -> str:
    """The consumer group of the routers of a topic, unless ``--group`` names one.

    Examples
    --------
    >>> default_group("switch.lines")
    'cdrflow-route.switch.lines'
    """
    return f"cdrflow-route.{topic}"


@dataclass(frozen=True)
class RouteEvent:
    """Something a :class:`ShippedFeed` did, for the command's output."""

    kind: RouteEventKind
    topic: str
    #: -1 for an ``error`` (the router's, not a partition's).
    partition: int
    message: str = ""
    #: The next offset of the partition to route.
    next_offset: int = 0
    tally: Tally | None = None


@dataclass
class _Partition:
    """One assigned partition of the foreign topic and how far it is routed."""

    tp: TopicPartition
    source: str
    next_offset: int
    layout: Layout | None
    header: str | None = None
    tally: Tally = field(default_factory=Tally)
    #: What was said about the partition's lines (streams.feeds.live.report_warnings).
    warned: list[str] = field(default_factory=list)
    skip: set[int] = field(default_factory=set)
    #: While ``skip`` is not passed, the recovered position's raw_ends (streams.feeds.positions.held_ends).
    floor: dict[int, int] | None = None
    recorded: int = -1


class ShippedFeed:
    """Routes a foreign topic of switch lines (module docstring).

    Use :meth:`run` (until a stop event), or :meth:`start`, :meth:`step` and
    :meth:`close`.

    Examples
    --------
    >>> router = ShippedFeed(Settings(), "switch.lines", Feed.of("asterisk"), json_field="message")  # doctest: +SKIP
    >>> router.run(stop=threading.Event())  # doctest: +SKIP
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        feed: Feed | None = None,
        *,
        json_field: str | None = None,
        group: str | None = None,
        topic_prefix: str = "",
        on_event: Callable[[RouteEvent], None] = lambda event: None,
        position_every_s: float = POSITION_EVERY_S,
        max_records: int = MAX_RECORDS,
    ):
        if json_field is not None:
            field_path(json_field)  # ValueError now, not at the first message
        self.settings = settings
        self.topic = topic
        self.feed = feed or Feed.canonical()
        self.json_field = json_field
        self.group = group or default_group(topic)
        self.topic_prefix = topic_prefix
        self.topics = LiveTopics.under(topic_prefix)
        self.ingest_id = f"route-{topic}"
        self.on_event = on_event
        self.position_every_s = position_every_s
        self.max_records = max_records
        self.book = PositionBook(settings.kafka_access(), topic_prefix)
        self.table = RoutingTable(settings, topic_prefix)
        self.partitions: dict[TopicPartition, _Partition] = {}
        self.raw_ends: dict[int, int] = {}
        self._sender: Sender | None = None
        self._consumer: KafkaConsumer | None = None
        self._recorded_at = 0.0
        self._listener = _Listener()
        #: Set by an error: the next step takes every assigned partition over again.
        self._retake = False
        self._header_probe = _header_probe(self.feed)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Check the topics and the catalogue, and join the group (partitions come with the
        first :meth:`step`s).

        Raises :class:`streams.kafka.client.BrokerError` or :class:`streams.feeds.ingest.NothingLoaded`.
        """
        reader = make_reader(self.settings)
        try:
            names = [self.topic, self.topics.raw, self.topics.rejected, self.topics.positions]
            names += [topic_name(n, self.topic_prefix) for n in (PLANS, ACCOUNTS)]
            require_topics(self.settings, reader, names)
        finally:
            reader.close()
        try:
            self.table.load()
            self.raw_ends = reported_raw_ends(self.settings.kafka_access(), self.topics.raw)
        except (AioKafkaError, TimeoutError, OSError) as error:
            raise unreachable(self.settings, error) from None
        if not self.table.numbers:
            names = f"{topic_name(PLANS, self.topic_prefix)}/{topic_name(ACCOUNTS, self.topic_prefix)}"
            raise NothingLoaded(
                f"no accounts on the {names} topics, so every line would be rejected as unknown_number: "
                "run `cdrflow load --plans DIR --accounts FILE` first"
            )
        self._join()
        self.table.start()

    def _join(self) -> None:
        """Open the sender and join the group (partitions come with the next polls). The
        membership lasts until :meth:`_drop`: an error mid-run does not give it up."""
        self._open_sender()
        try:
            self._consumer = without_leave_group(
                KafkaConsumer(
                    **self.settings.kafka_access().kafka_python(),
                    client_id="cdrflow-route",
                    group_id=self.group,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    allow_auto_create_topics=False,
                    bootstrap_timeout_ms=int(BOOTSTRAP_TIMEOUT_S * 1000),
                    # A dead router's partitions move after 6 s (docs/infra.md: joins take
                    # ~3 s on tansu with a short session; the default 45 s would stall them).
                    # A stopped one's too: it never sends LeaveGroup (without_leave_group).
                    session_timeout_ms=6_000,
                    heartbeat_interval_ms=2_000,
                    # Long: a step that takes partitions over reads cdr.raw back between
                    # two polls (each read may take up to READ_TIMEOUT_S).
                    max_poll_interval_ms=300_000,
                    # tansu holds every fetch this long, data or not (docs/streaming.md);
                    # shorter waits come back empty on its s3 store.
                    fetch_max_wait_ms=500,
                    max_partition_fetch_bytes=8 * 1024 * 1024,
                )
            )
        except KafkaError as error:
            raise unreachable(self.settings, error) from None
        self._consumer.subscribe([self.topic], listener=self._listener)

    def _open_sender(self) -> None:
        self._sender = Sender(self.settings, make_producer(self.settings, linger_ms=LIVE_LINGER_MS))

    def run(self, stop: Any, *, retry_s: float = RETRY_S) -> None:
        """:meth:`start`, then a :meth:`step` every ``Settings.edge_pass`` (at most) until
        ``stop`` (a ``threading.Event``) is set, then :meth:`close`.

        A broker error at the start ends the run (exit 1 in the command). Later, a refused
        send or a broker away is reported (``error``) and recovered from in place: the
        router lets go of its sender and of what it knew of its partitions (not of its
        group membership), waits ``retry_s`` (doubling up to ``RETRY_MAX_S`` while it
        lasts) and takes the partitions the group gives it over again, from the positions
        and the read-back, as a restart would.

        It never leaves the group for an error: leaving is a rebalance of every router,
        and on tansu 0.6.0 a leader that leaves while the group re-forms wedges the group
        until the broker restarts (docs/infra.md; the take-over test's failures in CI).
        """
        self.start()
        pass_s = self.settings.edge_pass()
        wait_s = retry_s
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    if self._sender is None:
                        self._open_sender()
                    routed = self.step()
                except (BrokerError, KafkaError, AioKafkaError, TimeoutError, OSError) as error:
                    again = f"(taking its partitions over again in {wait_s:g} s)"
                    self.on_event(RouteEvent("error", self.topic, -1, f"{error} {again}"))
                    self._let_go()
                    stop.wait(wait_s)
                    wait_s = min(RETRY_MAX_S, wait_s * 2)
                    continue
                wait_s = retry_s
                if routed:
                    # A pass's sends are one record batch per partition (streams.feeds.tail).
                    stop.wait(max(0.0, pass_s - (time.monotonic() - started)))
            self.close()
        finally:
            self.table.stop()
            self._drop()

    def close(self) -> None:
        """Record and commit every position, and quit the group (its session expires: no
        LeaveGroup, see :func:`streams.kafka.client.without_leave_group`)."""
        if self._sender is not None and self._consumer is not None:
            self._sender.flush()
            self._record(list(self.partitions.values()), force=True)
        self._drop()

    def _let_go(self) -> None:
        """After an error: the sends in flight may or may not have landed, so the sender and
        what the router knew of its partitions go; the next step takes the partitions the
        group still gives it over again (:meth:`assigned`)."""
        self._close_sender()
        self.partitions.clear()
        self._retake = True

    def _drop(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception:  # quitting the group is a courtesy; the session expires anyway
                pass
            self._consumer = None
        self._close_sender()
        self.partitions.clear()

    def _close_sender(self) -> None:
        if self._sender is not None:
            try:
                self._sender.close()
            except Exception:
                pass
            self._sender = None

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            raise RuntimeError("the router is not started")
        return self._sender

    @property
    def consumer(self) -> KafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("the router is not started")
        return self._consumer

    # ------------------------------------------------------------------ one poll

    def step(self, timeout_ms: int = POLL_MS) -> int:
        """Route what one poll brings; record and commit positions when due. Returns the
        number of messages routed."""
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_records)
        revoked, assigned = self._listener.take()
        self.revoked(revoked)
        if self._retake:  # after an error (run): every partition the group still gives it
            assigned = list(dict.fromkeys([*assigned, *(tp for tp in self.consumer.assignment() if tp not in revoked)]))
        self.assigned(assigned)
        self._retake = False
        routed = 0
        for tp, records in polled.items():
            if tp in revoked or tp in assigned:
                continue  # fetched before the change; read again from the recovered offset
            partition = self.partitions.get(tp)
            if partition is not None:
                routed += self._route(partition, records)
        if routed:
            self.sender.flush()
        self._record(list(self.partitions.values()), force=False)
        return routed

    def _route(self, partition: _Partition, records: Sequence[Any]) -> int:
        records = [r for r in records if r.offset >= partition.next_offset]
        if not records:
            return 0
        shipped = message_lines([r.value for r in records], self.json_field)
        segment: list[int] = []
        for index, record in enumerate(records):
            line = shipped.lines[index]
            if index not in shipped.problems and self._header_probe(line):
                layout = _as_header(self.feed, line)
                if layout is not None:
                    self._send(partition, records, shipped, segment)
                    segment = []
                    partition.layout, partition.header = layout, self.feed.decode_header(line).decode("utf-8", errors="replace")
                    partition.tally.lines += 1  # a line, but no CDR: nothing to send
                    continue
            segment.append(index)
        self._send(partition, records, shipped, segment)
        partition.next_offset = records[-1].offset + 1
        return len(records)

    def _send(self, partition: _Partition, records: Sequence[Any], shipped: Any, indices: list[int]) -> None:
        if not indices:
            return
        layout = partition.layout or _placeholder_layout()
        data = b"\n".join(shipped.lines[i] for i in indices) + b"\n"
        batch = layout.parse(data, 0)
        if batch.height != len(indices):  # one row per line is the framing's contract
            raise RuntimeError(f"{partition.source}: {len(indices)} lines framed as {batch.height} rows")
        problems = [shipped.problems.get(i) for i in indices]
        if partition.layout is None:
            missing = f"no header line seen on {partition.source} before this line (the profile names columns by header)"
            problems = [problem or missing for problem in problems]
        problem = pl.Series("problem", problems, dtype=pl.String)
        batch = batch.with_columns(
            pl.Series("line", [records[i].offset for i in indices], dtype=pl.Int64),
            # read_at: the record's own timestamp, the bound of its call's time (rating.bounds).
            pl.Series("read_at", [_timestamp(records[i]) for i in indices], dtype=pl.Int64)
            .cast(pl.Datetime("ms"))
            .dt.replace_time_zone("UTC"),
            pl.coalesce(problem, pl.col("framing")).alias("framing"),
            pl.when(problem.is_null()).then(pl.col("cdr_id")).otherwise(pl.lit("")).alias("cdr_id"),
        )
        partition.tally.add(
            send_batch(
                self.sender,
                self.topics,
                batch,
                self.table.numbers,
                source=partition.source,
                ingest_id=self.ingest_id,
                skip=partition.skip,
            )
        )
        if partition.layout is not None:
            for warning in report_warnings(self.sender, self.topics, partition.source, partition.layout, partition.warned):
                self.on_event(RouteEvent("warning", self.topic, partition.tp.partition, warning))
        if partition.skip and partition.next_offset > max(partition.skip):
            partition.skip.clear()
            partition.floor = None

    # ------------------------------------------------------------------ positions

    def _record(self, partitions: list[_Partition], *, force: bool) -> None:
        """Write the positions of the partitions that moved, then commit their offsets
        (every send before was acknowledged by the caller's flush)."""
        now = time.monotonic()
        if not force and now - self._recorded_at < self.position_every_s:
            return
        self._recorded_at = now
        for (topic, number), end in self.sender.acked_ends.items():
            if topic == self.topics.raw and end > self.raw_ends.get(number, 0):
                self.raw_ends[number] = end
        moved = [p for p in partitions if p.recorded != p.next_offset]
        if not moved:
            return
        for partition in moved:
            tally = partition.tally
            self.book.write(
                self.sender,
                Position(
                    key=route_key(self.topic, partition.tp.partition),
                    source=partition.source,
                    ingest_id=self.ingest_id,
                    next_line=partition.next_offset,
                    raw_ends=held_ends(self.raw_ends, partition.floor),
                    at=now_text(),
                    header=partition.header,
                    lines=tally.lines,
                    accepted=tally.accepted,
                    rejected=dict(tally.rejected),
                ),
            )
        self.sender.flush()
        # The group's offsets, for lag tools: after the positions, never ahead of them.
        self.consumer.commit(
            {p.tp: OffsetAndMetadata(p.next_offset, "", -1) for p in moved}, timeout_ms=GROUP_TIMEOUT_MS
        )
        for partition in moved:
            partition.recorded = partition.next_offset
            self.on_event(
                RouteEvent(
                    "progress", self.topic, partition.tp.partition, next_offset=partition.next_offset, tally=partition.tally
                )
            )

    def assigned(self, tps: list[TopicPartition]) -> None:
        """Take partitions over: from the later of the position and the committed offset,
        skipping the lines found on cdr.raw after the position."""
        fresh = [tp for tp in tps if tp not in self.partitions]
        if not fresh:
            return
        kafka = self.settings.kafka_access()
        try:
            positions = self.book.last(route_key(tp.topic, tp.partition) for tp in fresh)
        except (AioKafkaError, TimeoutError, OSError) as error:
            raise unreachable(self.settings, error) from None
        taken: list[_Partition] = []
        for tp in fresh:
            position = positions.get(route_key(tp.topic, tp.partition))
            committed = self.consumer.committed(tp, timeout_ms=GROUP_TIMEOUT_MS)
            known = [n for n in (committed, position.next_line if position else None) if n is not None]
            header = position.header if position else None
            partition = _Partition(
                tp=tp,
                source=f"{tp.topic}[{tp.partition}]",
                next_offset=max(known) if known else -1,
                layout=_layout_of(self.feed, header),
                header=header,
                tally=Tally(lines=position.lines, accepted=position.accepted, rejected=Counter(position.rejected))
                if position
                else Tally(),
            )
            taken.append(partition)
            self.partitions[tp] = partition
        keyed = {route_key(p.tp.topic, p.tp.partition): p for p in taken}
        with_position = [(partition, positions[key]) for key, partition in keyed.items() if key in positions]
        if with_position:
            starts: dict[int, int] = {}
            for _, position in with_position:
                for number, offset in position.raw_ends.items():
                    starts[number] = min(offset, starts.get(number, offset))
            try:
                found, ends = sent_lines(kafka, self.topics.raw, starts, {p.source for p, _ in with_position})
            except (AioKafkaError, TimeoutError, OSError) as error:
                raise unreachable(self.settings, error) from None
            for number, end in ends.items():
                self.raw_ends[number] = max(end, self.raw_ends.get(number, 0))
            for partition, position in with_position:
                partition.skip = {n for n in found.get(partition.source, ()) if n >= partition.next_offset}
                partition.floor = dict(position.raw_ends) if partition.skip else None
        for partition in taken:
            if partition.next_offset < 0:
                self.consumer.seek_to_beginning(partition.tp)
                partition.next_offset = 0
            else:
                self.consumer.seek(partition.tp, partition.next_offset)
            self.on_event(
                RouteEvent(
                    "assigned",
                    self.topic,
                    partition.tp.partition,
                    f"from offset {partition.next_offset}; {len(partition.skip):,} later lines were already sent "
                    "and are skipped",
                    next_offset=partition.next_offset,
                )
            )
        # Recorded before any of their lines is sent: a partition without a position has
        # no bound below which a read-back could skip its lines after a crash.
        self._record(taken, force=True)

    def revoked(self, tps: list[TopicPartition]) -> None:
        """Forget partitions the group took away (see :class:`_Listener`)."""
        for tp in tps:
            partition = self.partitions.pop(tp, None)
            if partition is not None:
                self.on_event(RouteEvent("revoked", self.topic, tp.partition, next_offset=partition.next_offset))


class _Listener(ConsumerRebalanceListener):
    """Notes the group's changes for the router's next step.

    kafka-python 3 calls these on its I/O thread, inside ``poll``, where nothing may
    block (no produce, no commit, no read). The router applies them as soon as ``poll``
    returns: its sends are all acknowledged by then (each step flushes before it polls),
    so a revoked partition needs nothing more than to be forgotten; its new owner
    recovers from the last position with the read-back.
    """

    def __init__(self) -> None:
        self.assigned: list[TopicPartition] = []
        self.revoked: list[TopicPartition] = []
        self._lock = threading.Lock()

    def on_partitions_revoked(self, revoked: Any) -> None:
        with self._lock:
            self.revoked.extend(revoked)
            self.assigned = [tp for tp in self.assigned if tp not in set(revoked)]

    def on_partitions_assigned(self, assigned: Any) -> None:
        with self._lock:
            self.assigned.extend(assigned)

    def take(self) -> tuple[list[TopicPartition], list[TopicPartition]]:
        """(revoked, assigned) since the last call."""
        with self._lock:
            revoked, assigned = self.revoked, self.assigned
            self.revoked, self.assigned = [], []
        return revoked, assigned


# ---------------------------------------------------------------------- header formats


def _layout_of(feed: Feed, header: str | None) -> Layout | None:
    """The layout of a partition: from its header line if one was seen, else the format's
    own (headerless formats; canonical in its column order), else none yet."""
    if header is not None:
        return feed.layout(header.encode())
    if not feed.has_header:
        return feed.layout(None)
    if feed.profile is None:
        return feed.layout(",".join(CDR_COLUMNS).encode())
    return None


def _timestamp(record: Any) -> int | None:
    """A record's timestamp (ms), None when the producer set none."""
    value = getattr(record, "timestamp", None)
    return value if isinstance(value, int) and value >= 0 else None


def _placeholder_layout() -> Layout:
    # Frames the lines of a partition without a layout yet; each row is then rejected.
    return Feed.canonical().layout(",".join(CDR_COLUMNS).encode())


def _header_probe(feed: Feed) -> Callable[[bytes], bool]:
    """A cheap test that a line may be a header of the feed (never for headerless ones)."""
    if not feed.has_header:
        return lambda line: False
    if feed.profile is None:
        needle = CDR_COLUMNS[0].encode()
    else:
        named = [
            spec.column for sources in feed.profile.columns.values() for spec in sources if isinstance(spec.column, str)
        ]
        codec = "utf-8" if feed.encoding.startswith("utf-8") else feed.encoding
        needle = named[0].encode(codec) if named else b""
    return lambda line: needle in line


def _as_header(feed: Feed, line: bytes) -> Layout | None:
    try:
        return feed.layout(line)
    except HeaderError:
        return None
