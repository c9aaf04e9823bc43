"""``cdrflow ingest``: CDR files onto the account-keyed ``cdr.raw`` topic, rejects onto ``cdr.rejected``.

Each file is read in pieces of whole lines (``streams.cdr_files.iter_chunks``), parsed
with its own header (``schemas.cdr_csv``), judged for spec 4 steps 1-2 with the
catalogue the ``plans``/``accounts`` topics hold (``streams.feeds.routing``), and sent:

- ``cdr.raw``: key the account id, value ``schemas.messages.cdr_chunk_value``: up to
  ``CDR_CHUNK_LINES`` lines of one account in file order, so each account's partition
  holds its lines in log order (spec 3);
- ``cdr.rejected``: ``schemas.messages.frame_value`` of rejection rows (``line, cdr_id,
  reason, detail, account_id, source, ingest_id``), key the called number of an
  ``unknown_number`` line, empty for a ``malformed`` one;
- ``ingest.files``: once a file's lines are all acknowledged, one event keyed by the
  SHA-256 of its content: ``{name, sha256, lines, ingest_id, at, bytes, accepted,
  rejected, forced}``. A file whose content is on this topic already is refused unless
  forced (its lines then reach the worker again and come out as duplicates).

Every ingest of a file gets a fresh ``ingest_id`` (the first 12 hex digits of its SHA-256,
then the UTC time), carried by every message and every row landed from it.

:func:`follow` watches a spool folder: a ``*.csv`` file is taken once its size and
modification time have not changed for ``settle_s`` (1 s); writers that can should write
``NAME.csv.part`` and rename it when complete, which is never taken early. Ingested files
move to ``done/``, refused ones (already ingested, no header) to ``refused/``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import polars as pl
from aiokafka.errors import KafkaError

from rating.ownership import routing_of
from schemas.messages import cdr_chunk_values, frame_value
from schemas.switch_formats import Feed
from schemas.topics import ACCOUNTS, CDR_RAW, CDR_REJECTED, INGEST_FILES, PLANS
from streams.catalog.publish import decoded_catalog_value, fold_catalog, read_catalog
from streams.cdr_files import CdrFileError, iter_chunks, modified_at, open_cdr_file, stamped
from streams.feeds.routing import AccountChunker, rejection_groups, route
from streams.kafka.async_reader import read_topics
from streams.kafka.client import (
    BrokerError,
    Sender,
    decode_json,
    make_reader,
    read_to_end,
    require_topics,
    topic_name,
    unreachable,
)
from streams.settings import Settings
from tariffs import Tariffs

#: Pieces a file is read in: the progress bar moves, memory stays flat (~50k lines each).
INGEST_CHUNK_BYTES: Final[int] = 8 << 20
_HASH_BLOCK = 1 << 20


class AlreadyIngested(Exception):
    """Files whose content was ingested before; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class NothingLoaded(Exception):
    """The ``accounts`` topic is empty: every line would be an unknown number."""


@dataclass(frozen=True)
class SpoolFile:
    """A file checked before anything is sent: it exists, has a CDR header, and its hash."""

    path: Path
    size: int
    sha256: str


@dataclass
class FileResult:
    """What was sent for one file."""

    path: Path
    sha256: str
    ingest_id: str
    forced: bool
    bytes: int = 0
    lines: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    raw_messages: int = 0
    rejected_messages: int = 0
    seconds: float = 0.0
    at: str = ""
    #: What the reader noticed about the whole file (times written in another zone...).
    warnings: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The ``ingest.files`` event value."""
        return {
            "name": self.path.name,
            "sha256": self.sha256,
            "lines": self.lines,
            "ingest_id": self.ingest_id,
            "at": self.at,
            "bytes": self.bytes,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "forced": self.forced,
            "warnings": self.warnings,
        }


def new_ingest_id(sha256: str, now: datetime | None = None) -> str:
    """A fresh id for one ingest of one file: its hash prefix and the UTC time.

    Examples
    --------
    >>> new_ingest_id("3f2a9c1b7d4e" + "0" * 52, datetime(2026, 3, 25, 10, 15, tzinfo=UTC))
    '3f2a9c1b7d4e-20260325T101500000000Z'
    """
    now = now or datetime.now(UTC)
    return f"{sha256[:12]}-{now.astimezone(UTC):%Y%m%dT%H%M%S%fZ}"


# ------------------------------------------------------------------------- the files


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files to ingest: each file named, and every ``*.csv`` of each folder named (sorted).

    Raises :class:`CdrFileError` for a path that does not exist or a folder without CSV files.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = spool_files(path)
            if not found:
                raise CdrFileError(f"{path}: no *.csv files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise CdrFileError(f"{path}: not a regular file or a folder")
        else:
            raise CdrFileError(f"{path}: CDR file not found")
    return files


def spool_files(folder: Path) -> list[Path]:
    """The ``*.csv`` files directly in ``folder`` (not in ``done/``), by name."""
    return sorted(p for p in folder.glob("*.csv") if p.is_file() and not p.name.startswith("."))


def check_file(path: Path, feed: Feed | None = None) -> SpoolFile:
    """Open, check the header and hash a CDR file; :class:`CdrFileError` says what is wrong."""
    handle, _, header = open_cdr_file(path, feed)
    with handle:
        digest = hashlib.sha256(header)
        size = len(header)
        try:
            while block := handle.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
        except OSError as error:
            raise CdrFileError(f"{path}: cannot be read ({error.strerror})") from None
    return SpoolFile(path=path, size=size, sha256=digest.hexdigest())


def refusals(files: Sequence[SpoolFile], ingested: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Why files must be refused without ``--force``: ingested before, or twice in this run.

    Examples
    --------
    >>> a = SpoolFile(Path("a.csv"), 10, "aa" * 32)
    >>> b = SpoolFile(Path("b.csv"), 10, "aa" * 32)
    >>> refusals([a, b], {})
    ['b.csv: same content as a.csv, given in the same run']
    >>> refusals([a], {"aa" * 32: {"name": "old.csv", "at": "2026-03-02T10:00:00Z", "ingest_id": "x"}})
    ['a.csv: already ingested as old.csv at 2026-03-02T10:00:00Z (ingest_id x)']
    """
    problems = []
    first: dict[str, Path] = {}
    for spool in files:
        earlier = ingested.get(spool.sha256)
        if earlier is not None:
            problems.append(
                f"{spool.path}: already ingested as {earlier.get('name')} at {earlier.get('at')} "
                f"(ingest_id {earlier.get('ingest_id')})"
            )
        elif spool.sha256 in first:
            problems.append(f"{spool.path}: same content as {first[spool.sha256]}, given in the same run")
        first.setdefault(spool.sha256, spool.path)
    return problems


# ------------------------------------------------------------------------- the broker


@dataclass
class _Topics:
    raw: str
    rejected: str
    files: str

    @classmethod
    def under(cls, topic_prefix: str) -> _Topics:
        return cls(*(topic_name(name, topic_prefix) for name in (CDR_RAW, CDR_REJECTED, INGEST_FILES)))


def ingested_files(settings: Settings, *, topic_prefix: str = "") -> dict[str, dict[str, Any]]:
    """The ``ingest.files`` events by SHA-256 (the last one of each file wins)."""
    return _files_of(read_to_end(settings, topic_name(INGEST_FILES, topic_prefix)))


def _files_of(records: Iterable[Any]) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    for record in records:
        try:
            value = decode_json(record.value)
        except ValueError:
            continue
        if isinstance(value, dict) and record.key:
            files[record.key.decode("utf-8", errors="replace")] = value
    return files


@dataclass(frozen=True)
class _Logs:
    """What ingest reads from the broker before sending: the ingested files and the catalogue."""

    files: dict[str, dict[str, Any]]
    tariffs: Tariffs


def _read_logs(settings: Settings, topic_prefix: str) -> _Logs:
    """``ingest.files``, ``plans`` and ``accounts`` in one read (all partitions at once).

    Raises :class:`BrokerError` when the broker does not answer, :class:`CatalogError`
    when a number belongs to two accounts.
    """
    names = [topic_name(n, topic_prefix) for n in (INGEST_FILES, PLANS, ACCOUNTS)]
    try:
        logs = read_topics(settings.kafka_access(), names)
    except (KafkaError, TimeoutError, OSError) as error:
        raise unreachable(settings, error) from None
    files, plans, accounts = (logs[name] for name in names)
    tariffs = fold_catalog(
        [(r.key, decoded_catalog_value(r.value, PLANS)) for r in plans],
        [(r.key, decoded_catalog_value(r.value, ACCOUNTS)) for r in accounts],
    )
    return _Logs(files=_files_of(files), tariffs=tariffs)


def _routing_table(settings: Settings, topic_prefix: str, tariffs: Tariffs | None = None) -> Mapping[str, str]:
    tariffs = tariffs if tariffs is not None else read_catalog(settings, topic_prefix=topic_prefix)
    if not tariffs.accounts:
        names = f"{topic_name(PLANS, topic_prefix)}/{topic_name(ACCOUNTS, topic_prefix)}"
        raise NothingLoaded(
            f"no accounts on the {names} topics of {','.join(settings.kafka_servers())}, so every line would "
            "be rejected as unknown_number: run `cdrflow load --plans DIR --accounts FILE` first"
        )
    return routing_of(tariffs)  # issue 25: a transferred number's calls by their charge time


def _require_all_topics(settings: Settings, topic_prefix: str) -> None:
    reader = make_reader(settings)
    try:
        names = [topic_name(n, topic_prefix) for n in (CDR_RAW, CDR_REJECTED, INGEST_FILES, PLANS, ACCOUNTS)]
        require_topics(settings, reader, names)
    finally:
        reader.close()


# -------------------------------------------------------------------------- ingesting


@dataclass
class IngestRun:
    """What one ``ingest`` sent."""

    files: list[FileResult]
    seconds: float

    @property
    def lines(self) -> int:
        return sum(f.lines for f in self.files)

    @property
    def ingest_ids(self) -> list[str]:
        return [f.ingest_id for f in self.files]


def ingest_paths(
    settings: Settings,
    paths: Iterable[Path],
    *,
    force: bool = False,
    topic_prefix: str = "",
    progress: Callable[[int, int], None] | None = None,
    feed: Feed | None = None,
) -> IngestRun:
    """Ingest CDR files (folders: every ``*.csv`` in them), all checked before any is sent.

    ``progress(bytes_done, bytes_total)`` is called as the files are read.

    Raises
    ------
    CdrFileError
        A path is missing, not readable, or has no CDR header (nothing was sent).
    AlreadyIngested
        A file's content was ingested before, or comes twice, and ``force`` is false
        (nothing was sent).
    NothingLoaded
        No accounts are loaded (nothing was sent).
    streams.kafka.client.BrokerError
        The broker is unreachable, a topic is missing, or it refused messages.
    """
    started = time.perf_counter()
    files = [check_file(path, feed) for path in expand_paths(paths)]
    _require_all_topics(settings, topic_prefix)
    logs = _read_logs(settings, topic_prefix)
    if not force:
        problems = refusals(files, logs.files)
        if problems:
            raise AlreadyIngested(problems)
    numbers = _routing_table(settings, topic_prefix, logs.tariffs)
    total = sum(f.size for f in files)
    done_before = 0
    results = []
    sender = Sender(settings)
    try:
        for spool in files:
            report = None if progress is None else (lambda done, base=done_before: progress(base + done, total))
            results.append(
                send_file(sender, spool, numbers, _Topics.under(topic_prefix), force=force, progress=report, feed=feed)
            )
            done_before += spool.size
    finally:
        sender.close()
    return IngestRun(files=results, seconds=time.perf_counter() - started)


def send_file(
    sender: Sender,
    spool: SpoolFile,
    account_of_number: Mapping[str, str],
    topics: _Topics,
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    feed: Feed | None = None,
) -> FileResult:
    """Send one checked file's lines and, once the broker has them all, its ``ingest.files`` event.

    ``feed``: the file's format (default canonical); its lines become canonical ones here.
    """
    started = time.perf_counter()
    result = FileResult(path=spool.path, sha256=spool.sha256, ingest_id=new_ingest_id(spool.sha256), forced=force)
    source = spool.path.name
    digest = hashlib.sha256()
    handle, layout, header = open_cdr_file(spool.path, feed)
    # read_at: the file's modification time, as `cdrflow rate` stamps it (rating.bounds).
    read_at = modified_at(spool.path)
    with handle:
        digest.update(header)
        result.bytes = len(header)
        next_line = layout.first_line
        chunker = AccountChunker()
        for piece in iter_chunks(handle, INGEST_CHUNK_BYTES):
            digest.update(piece)
            batch = stamped(layout.parse(piece, next_line), read_at)
            next_line += batch.height
            routed = route(batch, account_of_number, source=source, ingest_id=result.ingest_id)
            _send_chunks(sender, topics.raw, chunker.add(routed.accepted), source, result)
            for key, rows in rejection_groups(routed):
                sender.send(topics.rejected, key, frame_value(rows))
                result.rejected_messages += 1
            result.lines += batch.height
            result.accepted += routed.accepted.height
            result.rejected.update(routed.rejected.get_column("reason").to_list())
            result.bytes += len(piece)
            if progress is not None:
                progress(result.bytes)
        _send_chunks(sender, topics.raw, chunker.flush(), source, result)
    sender.flush()
    result.warnings = layout.notes.warnings(layout.feed)
    # The hash of what was read and sent (the file may have been rewritten since its check).
    result.sha256 = digest.hexdigest()
    result.at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sender.send(topics.files, result.sha256.encode(), result.record())
    sender.flush()
    result.seconds = time.perf_counter() - started
    return result


def _send_chunks(
    sender: Sender, topic: str, chunks: list[tuple[str, pl.DataFrame]], source: str, result: FileResult
) -> None:
    values = cdr_chunk_values(source, [lines for _, lines in chunks], result.ingest_id)
    for (account_id, _), value in zip(chunks, values):
        sender.send(topic, account_id.encode(), value)
        result.raw_messages += 1


# -------------------------------------------------------------------------- following


@dataclass(frozen=True)
class FollowEvent:
    """What :func:`follow` did with one spool file (or why it is waiting)."""

    kind: Literal["ingested", "refused", "error"]
    path: Path
    message: str = ""
    result: FileResult | None = None
    moved_to: Path | None = None


class SpoolWatch:
    """Which spool files are complete: size and mtime unchanged for ``settle_s``.

    Examples
    --------
    >>> watch = SpoolWatch(settle_s=1.0)
    >>> watch.ready({Path("a.csv"): (10, 1)}, now=0.0)
    []
    >>> watch.ready({Path("a.csv"): (10, 1)}, now=1.5)
    [PosixPath('a.csv')]
    >>> watch.ready({Path("a.csv"): (20, 2)}, now=2.0)  # it grew: wait again
    []
    """

    def __init__(self, settle_s: float = 1.0):
        self.settle_s = settle_s
        self._seen: dict[Path, tuple[tuple[int, int], float]] = {}

    def ready(self, files: Mapping[Path, tuple[int, int]], now: float) -> list[Path]:
        """Files whose (size, mtime) has stayed the same for ``settle_s``, by name."""
        seen = {}
        for path, stamp in files.items():
            previous = self._seen.get(path)
            seen[path] = previous if previous is not None and previous[0] == stamp else (stamp, now)
        self._seen = seen
        return sorted(path for path, (_, since) in seen.items() if now - since >= self.settle_s)

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)


def check_spool_folder(folder: Path) -> Path:
    """The folder to follow, or :class:`CdrFileError` saying why it cannot be."""
    folder = Path(folder)
    if folder.is_file():
        raise CdrFileError(f"{folder}: is a file; --follow watches a spool folder of *.csv files")
    if not folder.is_dir():
        raise CdrFileError(f"{folder}: spool folder not found")
    return folder


def _stamps(folder: Path) -> dict[Path, tuple[int, int]]:
    stamps = {}
    for path in spool_files(folder):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        stamps[path] = (stat.st_size, stat.st_mtime_ns)
    return stamps


def _move(path: Path, folder: Path, suffix: str) -> Path:
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}.{suffix}{path.suffix}"
    path.replace(target)
    return target


def follow(
    settings: Settings,
    folder: Path,
    *,
    force: bool = False,
    topic_prefix: str = "",
    on_event: Callable[[FollowEvent], None] = lambda event: None,
    on_progress: Callable[[Path, int, int], None] | None = None,
    stop: threading.Event | None = None,
    poll_s: float = 0.5,
    settle_s: float = 1.0,
    retry_s: float = 5.0,
    feed: Feed | None = None,
) -> None:
    """Ingest each ``*.csv`` that is, or comes to be, complete in ``folder`` until ``stop`` is set.

    Files already there are taken first, by name. The catalogue and the ``ingest.files``
    topic are read again for each file, so accounts loaded meanwhile route its lines.
    A broker that stops answering is reported (``error``) and tried again after
    ``retry_s``; the file stays in the spool. ``on_progress(path, bytes_done, size)`` is
    called as a file is read.
    """
    folder = check_spool_folder(folder)
    stop = stop or threading.Event()
    _require_all_topics(settings, topic_prefix)
    watch = SpoolWatch(settle_s)
    topics = _Topics.under(topic_prefix)
    sender = Sender(settings)
    try:
        while not stop.is_set():
            for path in watch.ready(_stamps(folder), time.monotonic()):
                if stop.is_set():
                    break
                watch.forget(path)
                try:
                    event = _follow_one(
                        settings, sender, path, folder, topics, force, topic_prefix, on_progress, feed
                    )
                except (BrokerError, NothingLoaded) as error:
                    on_event(FollowEvent("error", path, str(error)))
                    stop.wait(retry_s)
                    break
                on_event(event)
            stop.wait(poll_s)
    finally:
        sender.close()


def _follow_one(
    settings: Settings,
    sender: Sender,
    path: Path,
    folder: Path,
    topics: _Topics,
    force: bool,
    topic_prefix: str,
    on_progress: Callable[[Path, int, int], None] | None,
    feed: Feed | None = None,
) -> FollowEvent:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    try:
        spool = check_file(path, feed)
    except CdrFileError as error:
        if not path.exists():
            return FollowEvent("error", path, str(error))
        return FollowEvent("refused", path, str(error), moved_to=_move(path, folder / "refused", stamp))
    logs = _read_logs(settings, topic_prefix)
    if not force:
        problems = refusals([spool], logs.files)
        if problems:
            return FollowEvent("refused", path, problems[0], moved_to=_move(path, folder / "refused", stamp))
    numbers = _routing_table(settings, topic_prefix, logs.tariffs)
    report = None if on_progress is None else (lambda done: on_progress(path, done, spool.size))
    result = send_file(sender, spool, numbers, topics, force=force, progress=report, feed=feed)
    return FollowEvent("ingested", path, result=result, moved_to=_move(path, folder / "done", result.ingest_id))
