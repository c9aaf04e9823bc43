"""``cdrflow ingest --tail``: follow CDR files a switch is still writing, like ``tail -F``.

A switch appends to its CSV all day (Asterisk's ``Master.csv``, FreeSWITCH's cdr-csv)
and rotates it. :class:`Tailer` reads each followed path every ``poll_s``
(``Settings.edge_pass``: 0.5 s on a Kafka, 1 s on the embedded broker): every whole line
that appeared is framed with the path's format, judged and sent like ``cdrflow ingest``
sends it (streams.feeds.live), at once, without waiting for a chunk to fill; a half-written
last line waits for its newline.

Why not more often: each pass sends a record batch to every ``cdr.raw`` partition its
lines go to, and the embedded broker's s3 store reads back only ~20 record batches a
second in all (docs/streaming.md, "Live feeds"): at 0.1 s a tail alone sent ~40 a
second and the worker fell minutes behind. Each pass also makes one message per
account, and the worker's cost goes with messages.

**Generations.** What a path names changes: a rotation renames the file and the switch
starts a new one; ``copytruncate`` empties it in place. Each file a path names, from its
first byte, is one *generation*, with its own line numbers (physical lines of that file,
the first is 1) and its own ``source``: ``<name>@<UTC time it was first seen>``, e.g.
``Master.csv@2026-03-02T00:00:01.204Z``. Sources sort in the order of the generations,
and so does ``cdrflow export``.

- *Rotation* (the path names another inode, or nothing): the old file is read on, through
  the descriptor still open, until it has not grown for ``settle_s`` (1 s); its last line
  counts even without a newline; then the path's new file is a new generation.
- *Truncation* (the file is shorter than what was read, or its first bytes changed): if a
  copy of it is in the same folder (``copytruncate``), the lines after the position are
  read from the copy; the file itself then starts a new generation.

**Positions.** Where each generation is (inode, byte offset, next line, and the ``cdr.raw``
ends of streams.feeds.positions) goes to ``ingest.positions`` every ``position_every_s`` (1 s),
when a generation starts (before any of its lines is sent) and when it ends. A restart
reads it back, finds the file again (by inode and first bytes, also when it was rotated
meanwhile: it looks in the path's folder), skips the lines it finds already on
``cdr.raw`` and goes on: no line is skipped or sent twice, whenever it was killed.

A generation read to its end is recorded on ``ingest.files`` like an ingested file (its
SHA-256, ingest_id, counts), so ``cdrflow ingest`` of the rotated file is refused.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from aiokafka.errors import KafkaError as AioKafkaError
from kafka.errors import KafkaError

from schemas.cdr_csv import HeaderError
from schemas.switch_formats import Feed, Layout
from schemas.topics import ACCOUNTS, PLANS
from streams.catalog.routing_table import RoutingTable
from streams.cdr_files import CdrFileError, stamped
from streams.feeds.ingest import NothingLoaded, new_ingest_id
from streams.feeds.live import LIVE_LINGER_MS, LiveTopics, Tally, report_warnings, send_batch
from streams.feeds.positions import (
    FileMark,
    Position,
    PositionBook,
    held_ends,
    now_text,
    reported_raw_ends,
    sent_lines,
    tail_key,
)
from streams.kafka.client import (
    BrokerError,
    Sender,
    make_producer,
    make_reader,
    require_topics,
    topic_name,
    unreachable,
)
from streams.settings import Settings

SETTLE_S: Final[float] = 1.0
POSITION_EVERY_S: Final[float] = 1.0
#: At most this much of a file is read per pass (a backlog goes in pieces of ~50k lines).
READ_BYTES: Final[int] = 8 << 20
#: The first bytes of a generation that identify it beside its inode.
HEAD_BYTES: Final[int] = 1024
RETRY_S: Final[float] = 5.0

TailEventKind = Literal["following", "waiting", "progress", "rotated", "truncated", "lost", "error", "warning"]


@dataclass(frozen=True)
class TailEvent:
    """Something a :class:`Tailer` did or saw, for the command's output."""

    kind: TailEventKind
    path: Path
    source: str = ""
    message: str = ""
    #: The next line of the generation to be read.
    next_line: int = 0
    tally: Tally | None = None
    #: Bytes of the file not read yet.
    behind_bytes: int = 0


@dataclass
class _Generation:
    """One file a followed path names, and how far it has been sent."""

    path: Path
    #: Where the file was found: the path, or the name it was rotated to.
    file: Path
    fd: int
    device: int
    inode: int
    source: str
    ingest_id: str
    offset: int
    next_line: int
    layout: Layout | None
    tally: Tally = field(default_factory=Tally)
    #: What was said about the generation's lines (streams.feeds.live.report_warnings).
    warned: list[str] = field(default_factory=list)
    #: Lines found on cdr.raw after a restart: sent before the crash, not to send again.
    skip: set[int] = field(default_factory=set)
    #: While ``skip`` is not passed, the recovered position's raw_ends (streams.feeds.positions.held_ends).
    floor: dict[int, int] | None = None
    #: The file's first bytes read so far (up to HEAD_BYTES): a truncation changes them.
    head: bytes = b""
    size: int = 0
    grown_at: float = 0.0
    rotated_since: float | None = None
    recorded: tuple[int, int] = (-1, -1)

    def mark(self) -> FileMark:
        return FileMark(
            device=self.device,
            inode=self.inode,
            offset=self.offset,
            head_sha256=hashlib.sha256(self.head).hexdigest(),
            head_bytes=len(self.head),
        )


class Tailer:
    """Follows CDR files and sends their lines as they are written (module docstring).

    Use :meth:`run` (until a stop event), or :meth:`start`, :meth:`step` and :meth:`close`
    (tests drive it step by step).

    Examples
    --------
    >>> tailer = Tailer(Settings(), [Path("/var/log/asterisk/cdr-csv/Master.csv")],
    ...                 Feed.of("asterisk"))  # doctest: +SKIP
    >>> tailer.run(stop=threading.Event())  # doctest: +SKIP
    """

    def __init__(
        self,
        settings: Settings,
        paths: Iterable[Path],
        feed: Feed | None = None,
        *,
        topic_prefix: str = "",
        on_event: Callable[[TailEvent], None] = lambda event: None,
        poll_s: float | None = None,
        settle_s: float = SETTLE_S,
        position_every_s: float = POSITION_EVERY_S,
    ):
        self.settings = settings
        self.paths = list(dict.fromkeys(Path(p).absolute() for p in paths))
        self.feed = feed or Feed.canonical()
        self.topic_prefix = topic_prefix
        self.topics = LiveTopics.under(topic_prefix)
        self.on_event = on_event
        self.poll_s = poll_s if poll_s is not None else settings.edge_pass()
        self.settle_s = settle_s
        self.position_every_s = position_every_s
        self.book = PositionBook(settings.kafka_access(), topic_prefix)
        self.table = RoutingTable(settings, topic_prefix)
        self.generations: dict[Path, _Generation] = {}
        self.raw_ends: dict[int, int] = {}
        self._sender: Sender | None = None
        self._waiting: set[Path] = set()
        self._recorded_at = 0.0

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Check the topics and the catalogue, then recover every path's position.

        Raises :class:`streams.kafka.client.BrokerError` (broker unreachable, topics missing),
        :class:`streams.feeds.ingest.NothingLoaded` (no accounts) or :class:`CdrFileError`.
        """
        for path in self.paths:
            if not path.parent.is_dir():
                raise CdrFileError(f"{path}: its folder {path.parent} does not exist")
            if path.exists() and not path.is_file():
                raise CdrFileError(f"{path}: not a regular file; --tail follows files")
        self._require_topics()
        try:
            self.table.load()
        except (AioKafkaError, TimeoutError, OSError) as error:
            raise unreachable(self.settings, error) from None
        if not self.table.numbers:
            names = f"{topic_name(PLANS, self.topic_prefix)}/{topic_name(ACCOUNTS, self.topic_prefix)}"
            raise NothingLoaded(
                f"no accounts on the {names} topics, so every line would be rejected as unknown_number: "
                "run `cdrflow load --plans DIR --accounts FILE` first"
            )
        self._resume()
        self.table.start()

    def _require_topics(self) -> None:
        reader = make_reader(self.settings)
        try:
            names = [self.topics.raw, self.topics.rejected, self.topics.files, self.topics.positions]
            names += [topic_name(n, self.topic_prefix) for n in (PLANS, ACCOUNTS)]
            require_topics(self.settings, reader, names)
        finally:
            reader.close()

    def _resume(self) -> None:
        """Open a sender and pick every path up where its last position left it."""
        self._sender = Sender(self.settings, make_producer(self.settings, linger_ms=LIVE_LINGER_MS))
        self._recorded_at = time.monotonic()  # the positions just read are as good as new ones
        kafka = self.settings.kafka_access()
        try:
            positions = self.book.last(tail_key(path) for path in self.paths)
        except (AioKafkaError, TimeoutError, OSError) as error:
            raise unreachable(self.settings, error) from None
        resumed: list[tuple[_Generation, Position]] = []
        for path in self.paths:
            position = positions.get(tail_key(path))
            if position is None or position.done or position.file is None:
                continue
            generation = self._reopen(path, position)
            if generation is None:
                self._lost(path, position)
            else:
                self.generations[path] = generation
                resumed.append((generation, position))
        try:
            if resumed:
                starts: dict[int, int] = {}
                for _, position in resumed:
                    for partition, offset in position.raw_ends.items():
                        starts[partition] = min(offset, starts.get(partition, offset))
                found, self.raw_ends = sent_lines(kafka, self.topics.raw, starts, {g.source for g, _ in resumed})
            else:
                found, self.raw_ends = {}, reported_raw_ends(kafka, self.topics.raw)
        except (AioKafkaError, TimeoutError, OSError) as error:
            raise unreachable(self.settings, error) from None
        for generation, position in resumed:
            generation.skip = {n for n in found.get(generation.source, ()) if n >= generation.next_line}
            generation.floor = dict(position.raw_ends) if generation.skip else None
            rotated = (
                f" (rotated away, found as {generation.file.name}: read to its end first)"
                if generation.rotated_since is not None
                else ""
            )
            self.on_event(
                TailEvent(
                    "following",
                    generation.path,
                    generation.source,
                    f"resumed at line {generation.next_line}; {len(generation.skip):,} later lines were "
                    f"already sent and are skipped{rotated}",
                    next_line=generation.next_line,
                )
            )

    def run(self, stop: threading.Event, *, retry_s: float = RETRY_S) -> None:
        """:meth:`start`, then a :meth:`step` every ``poll_s`` until ``stop`` is set.

        When the broker stops answering or refuses a send, the sends in flight may or
        may not have landed: the tailer reports it (``error``), waits ``retry_s`` and
        resumes as a restart would, from the positions and the read-back.
        """
        self.start()
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    busy = self.step()
                except (BrokerError, KafkaError, AioKafkaError, TimeoutError) as error:
                    self.on_event(TailEvent("error", self.paths[0], message=f"{error} (resuming in {retry_s:g} s)"))
                    self._drop()
                    if stop.wait(retry_s):
                        return
                    self._resume_after_error(stop, retry_s)
                    continue
                if not busy:  # a pass every poll_s, however long its sends took
                    stop.wait(max(0.0, self.poll_s - (time.monotonic() - started)))
            self.close()
        finally:
            self._drop()
            self.table.stop()

    def _resume_after_error(self, stop: threading.Event, retry_s: float) -> None:
        while not stop.is_set():
            try:
                self._resume()
                return
            except BrokerError as error:
                self.on_event(TailEvent("error", self.paths[0], message=f"{error} (again in {retry_s:g} s)"))
                self._drop()
                stop.wait(retry_s)

    def close(self) -> None:
        """Record every position and let go of the files and the producer."""
        if self._sender is not None:
            self._sender.flush()
            self._record(force=True)
        self._drop()

    def _drop(self) -> None:
        for generation in self.generations.values():
            os.close(generation.fd)
        self.generations.clear()
        if self._sender is not None:
            try:
                self._sender.close()
            except Exception:  # already broken: nothing more to give back
                pass
            self._sender = None

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            raise RuntimeError("the tailer is not started")
        return self._sender

    # ------------------------------------------------------------------ one pass

    def step(self) -> bool:
        """Read and send what every path got since the last pass; record positions when due.

        True when a file had more than one read's worth waiting (call again at once).
        """
        busy = False
        sent_before = self.sender.messages
        for path in self.paths:
            generation = self.generations.get(path) or self._begin(path)
            if generation is not None:
                busy |= self._advance(generation)
        if self.sender.messages != sent_before:
            self.sender.flush()
        self._record(force=False)
        return busy

    def _begin(self, path: Path) -> _Generation | None:
        """A new generation of ``path`` (its start recorded before any line is sent)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            if path not in self._waiting:
                self._waiting.add(path)
                self.on_event(TailEvent("waiting", path, message="not there yet; waiting for it"))
            return None
        except OSError as error:
            raise CdrFileError(f"{path}: cannot be read ({error.strerror})") from None
        self._waiting.discard(path)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise CdrFileError(f"{path}: not a regular file; --tail follows files")
        started = now_text()
        identity = hashlib.sha256(f"{path}\0{info.st_dev}\0{info.st_ino}\0{started}".encode()).hexdigest()
        generation = _Generation(
            path=path,
            file=path,
            fd=fd,
            device=info.st_dev,
            inode=info.st_ino,
            source=f"{path.name}@{started}",
            ingest_id=new_ingest_id(identity, datetime.now(UTC)),
            offset=0,
            next_line=1,
            layout=None if self.feed.has_header else self.feed.layout(None),
        )
        self.generations[path] = generation
        # Recorded (and acknowledged) before its first line is sent: a restart must know
        # the generation's source to find its lines on cdr.raw.
        self._record(force=True, only=generation)
        self.on_event(TailEvent("following", path, generation.source, "a new file: from line 1", next_line=1))
        return generation

    def _advance(self, generation: _Generation) -> bool:
        now = time.monotonic()
        size = os.fstat(generation.fd).st_size
        if size < generation.offset or (size != generation.size and not self._head_intact(generation)):
            self._truncated(generation)
            return False
        if size != generation.size:
            generation.size, generation.grown_at = size, now
        if generation.rotated_since is None and not self._at_path(generation):
            generation.rotated_since = now
        busy = False
        if size > generation.offset:
            data = os.pread(generation.fd, min(size - generation.offset, READ_BYTES), generation.offset)
            busy = len(data) == READ_BYTES
            whole = data[: data.rfind(b"\n") + 1]
            if not whole and busy:
                whole = data  # 8 MB without a newline: no CDR, one malformed line
            if whole:
                self._send(generation, whole)
        quiet_since = max(generation.grown_at, generation.rotated_since or 0.0)
        if generation.rotated_since is not None and not busy and now - quiet_since >= self.settle_s:
            self._finish(
                generation, "rotated", f"{generation.path} names another file now; the old one was read to its end"
            )
        return busy

    def _send(self, generation: _Generation, data: bytes) -> None:
        """Frame and send whole lines of ``data`` (the next bytes of the generation)."""
        if generation.layout is None:
            end = data.find(b"\n") + 1 or len(data)
            try:
                generation.layout = self.feed.layout(data[:end])
            except HeaderError as error:
                raise CdrFileError(f"{generation.path} ({generation.source}): {error}") from None
            generation.offset += end
            generation.next_line = generation.layout.first_line
            data = data[end:]
        # read_at: when the lines were read, the bound of their calls' times (rating.bounds).
        batch = stamped(generation.layout.parse(data, generation.next_line), datetime.now(UTC))
        tally = send_batch(
            self.sender,
            self.topics,
            batch,
            self.table.numbers,
            source=generation.source,
            ingest_id=generation.ingest_id,
            skip=generation.skip,
        )
        generation.tally.add(tally)
        for warning in report_warnings(self.sender, self.topics, generation.source, generation.layout, generation.warned):
            self.on_event(TailEvent("warning", generation.path, generation.source, warning, next_line=generation.next_line))
        generation.offset += len(data)
        generation.next_line += batch.height
        if generation.skip and generation.next_line > max(generation.skip):
            generation.skip.clear()
            generation.floor = None
        if len(generation.head) < HEAD_BYTES:
            generation.head = os.pread(generation.fd, min(generation.offset, HEAD_BYTES), 0)

    def _finish(self, generation: _Generation, kind: TailEventKind, why: str) -> None:
        """The generation is complete: send its last line (even without a newline),
        record it done and on ``ingest.files``, and let go of it."""
        size = os.fstat(generation.fd).st_size
        if size > generation.offset:
            self._send(generation, os.pread(generation.fd, size - generation.offset, generation.offset))
        self.sender.flush()
        self._record(force=True, only=generation, done=True)
        self._record_file(generation)
        self.on_event(
            TailEvent(kind, generation.path, generation.source, why, next_line=generation.next_line, tally=generation.tally)
        )
        os.close(generation.fd)
        del self.generations[generation.path]

    def _truncated(self, generation: _Generation) -> None:
        """The file was emptied or rewritten in place: finish the generation from a copy
        (``copytruncate``), or say which lines may be lost."""
        copy = self._copy_of(generation)
        if copy is not None:
            os.close(generation.fd)
            generation.fd, generation.file = copy
            why = f"{generation.path} was truncated; its copy {copy[1].name} was read to its end"
            self._finish(generation, "truncated", why)
            return
        why = (
            f"{generation.path} was truncated and no copy of it is in {generation.path.parent}: lines written "
            f"after line {generation.next_line - 1} and before the truncation, if any, were not read"
        )
        self._finish(generation, "truncated", why)

    # ------------------------------------------------------------------ files

    def _at_path(self, generation: _Generation) -> bool:
        """Whether the path still names this generation's file."""
        try:
            info = os.stat(generation.path)
        except FileNotFoundError:
            return False
        return (info.st_dev, info.st_ino) == (generation.device, generation.inode)

    def _head_intact(self, generation: _Generation) -> bool:
        return not generation.head or os.pread(generation.fd, len(generation.head), 0) == generation.head

    def _copy_of(self, generation: _Generation) -> tuple[int, Path] | None:
        """A file beside the generation's, of another inode, that starts with its first
        bytes and holds at least what was read (a ``copytruncate`` copy)."""
        if not generation.head:
            return None
        for candidate in _neighbours(generation.path):
            found = _open_if(
                candidate,
                lambda info: (info.st_dev, info.st_ino) != (generation.device, generation.inode)
                and info.st_size >= generation.offset,
                generation.head,
            )
            if found is not None:
                return found, candidate
        return None

    def _reopen(self, path: Path, position: Position) -> _Generation | None:
        """The generation of a position, opened where it was left: the file the path names,
        or, rotated meanwhile, the file of its inode (or a copy of it) in the same folder."""
        mark = position.file
        assert mark is not None
        head_sha256 = mark.head_sha256
        at_path = None
        for candidate in (path, *_neighbours(path)):
            try:
                info = os.stat(candidate)
            except OSError:
                continue
            same_inode = (info.st_dev, info.st_ino) == (mark.device, mark.inode)
            # A copy is known by its first bytes only: never without any.
            if not same_inode and (mark.head_bytes == 0 or candidate == path):
                continue
            if info.st_size < mark.offset:
                continue
            try:
                fd = os.open(candidate, os.O_RDONLY)
            except OSError:
                continue
            head = os.pread(fd, mark.head_bytes, 0)
            if hashlib.sha256(head).hexdigest() != head_sha256:
                os.close(fd)
                continue
            at_path = candidate
            break
        if at_path is None:
            return None
        info = os.fstat(fd)
        generation = _Generation(
            path=path,
            file=at_path,
            fd=fd,
            device=info.st_dev,
            inode=info.st_ino,
            source=position.source,
            ingest_id=position.ingest_id,
            offset=mark.offset,
            next_line=position.next_line,
            layout=None,
            tally=Tally(lines=position.lines, accepted=position.accepted, rejected=Counter(position.rejected)),
            head=head,
            size=info.st_size,
            grown_at=time.monotonic(),
            recorded=(mark.offset, position.next_line),
        )
        if at_path != path:
            generation.rotated_since = time.monotonic()
        if not self.feed.has_header:
            generation.layout = self.feed.layout(None)
        elif mark.offset > 0:
            header = os.pread(fd, min(mark.offset, 1 << 16), 0)
            try:
                generation.layout = self.feed.layout(header[: header.find(b"\n") + 1 or len(header)])
            except HeaderError as error:
                os.close(fd)
                raise CdrFileError(f"{at_path} ({position.source}): {error}") from None
        return generation

    def _lost(self, path: Path, position: Position) -> None:
        self.on_event(
            TailEvent(
                "lost",
                path,
                position.source,
                f"the file of {position.source} is gone (not at {path}, and no file of its inode or first "
                f"bytes in {path.parent}): its lines from {position.next_line} on, if any, were not read",
                next_line=position.next_line,
            )
        )
        # Recorded done, so that the next start does not look for it again.
        self.book.write(self.sender, position.model_copy(update={"done": True, "at": now_text()}))
        self.sender.flush()

    def _record_file(self, generation: _Generation) -> None:
        """The finished generation on ``ingest.files``, as ``cdrflow ingest`` records a file."""
        digest = hashlib.sha256()
        done = 0
        while done < generation.offset:
            block = os.pread(generation.fd, min(1 << 20, generation.offset - done), done)
            if not block:
                break
            digest.update(block)
            done += len(block)
        tally = generation.tally
        record = {
            "name": generation.source,
            "sha256": digest.hexdigest(),
            "lines": tally.lines,
            "ingest_id": generation.ingest_id,
            "at": now_text(),
            "bytes": done,
            "accepted": tally.accepted,
            "rejected": dict(sorted(tally.rejected.items())),
            "forced": False,
            "tailed": str(generation.path),
        }
        self.sender.send(self.topics.files, record["sha256"].encode(), record)
        self.sender.flush()

    # ------------------------------------------------------------------ positions

    def _record(self, *, force: bool, only: _Generation | None = None, done: bool = False) -> None:
        """Write the position of each generation that moved (all acknowledged sends before)."""
        now = time.monotonic()
        if not force and now - self._recorded_at < self.position_every_s:
            return
        for partition_topic, end in self.sender.acked_ends.items():
            topic, partition = partition_topic
            if topic == self.topics.raw and end > self.raw_ends.get(partition, 0):
                self.raw_ends[partition] = end
        generations = [only] if only is not None else list(self.generations.values())
        written = []
        for generation in generations:
            if not done and generation.recorded == (generation.offset, generation.next_line) and only is None:
                continue
            tally = generation.tally
            self.book.write(
                self.sender,
                Position(
                    key=tail_key(generation.path),
                    source=generation.source,
                    ingest_id=generation.ingest_id,
                    next_line=generation.next_line,
                    raw_ends=held_ends(self.raw_ends, generation.floor),
                    at=now_text(),
                    done=done,
                    file=generation.mark(),
                    lines=tally.lines,
                    accepted=tally.accepted,
                    rejected=dict(tally.rejected),
                ),
            )
            written.append(generation)
        if written:
            self.sender.flush()
        for generation in written:
            generation.recorded = (generation.offset, generation.next_line)
            if only is None:
                size = os.fstat(generation.fd).st_size
                self.on_event(
                    TailEvent(
                        "progress",
                        generation.path,
                        generation.source,
                        next_line=generation.next_line,
                        tally=generation.tally,
                        behind_bytes=max(0, size - generation.offset),
                    )
                )
        if only is None:
            self._recorded_at = now


def _neighbours(path: Path) -> list[Path]:
    """The other files of the path's folder, by name: where rotated files go."""
    try:
        return sorted(p for p in path.parent.iterdir() if p != path and p.is_file())
    except OSError:
        return []


def _open_if(path: Path, wanted: Callable[[os.stat_result], bool], head: bytes) -> int | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not wanted(info):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    if os.pread(fd, len(head), 0) != head:
        os.close(fd)
        return None
    return fd
