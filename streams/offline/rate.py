"""The offline rating path: a CDR file in, rated.csv / rejected.csv / alerts.csv out.

Reads the file in chunks of whole lines, rates each chunk with the state of the chunks
before (the same ``rating.rate`` the streaming agent calls) and appends every chunk's
results to the three output files (spec/rating.md 6), so memory stays flat on big files.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import polars as pl

from rating import Catalog, PreparedBatch, RatingResult, RatingState, prepare, rate
from schemas.columns import (
    ALERT_COLUMNS,
    RATED_COLUMNS,
    RATED_EXPLAIN_COLUMNS,
    REJECTED_COLUMNS,
)
from schemas.output_files import CSV_DATETIME_FORMAT, alerts_csv_frame, rated_csv_frame, rejected_csv_frame
from schemas.switch_formats import Feed, Layout
from streams.cdr_files import (
    CHUNK_BYTES,
    CdrFileError,
    check_outputs,
    iter_chunks,
    modified_at,
    open_cdr_file,
    open_output,
    stamped,
)


@dataclass
class RateSummary:
    """Counts and money of one run, for the summary table and ``--json``."""

    cdrs: int = 0
    rated: int = 0
    unbilled: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    amount: int = 0
    alerts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    #: What the reader noticed about the whole file (times written in another zone...).
    warnings: list[str] = field(default_factory=list)

    def add(self, result: RatingResult) -> None:
        status = result.rated.get_column("status")
        self.rated += int((status == "rated").sum())
        self.unbilled += int((status == "unbilled").sum())
        self.amount += int(result.rated.get_column("amount").sum())
        self.rejected.update(result.rejected.get_column("reason").to_list())
        self.alerts.update(result.alerts.get_column("kind").to_list())
        self.cdrs += result.rated.height + result.rejected.height

    @property
    def cdrs_per_second(self) -> float:
        return self.cdrs / self.seconds if self.seconds > 0 else 0.0


def _prepared_chunks(
    handle: IO[bytes],
    layout: Layout,
    chunk_bytes: int,
    pool: ThreadPoolExecutor,
    catalog: Future[Catalog],
    read_at: datetime,
) -> Iterator[tuple[int, PreparedBatch]]:
    """(bytes, prepared batch) per chunk, read, parsed and prepared one chunk ahead in ``pool``.

    ``pool`` has one worker, so chunks are read in file order. The first chunk is handed
    to it before this returns, so that it is read and parsed while the caller does
    something else (loads the plans, then sets ``catalog``, which preparing waits for).
    The state-free part of rating (``rating.prepare``) is thereby done beside the rating
    of the chunk before.
    """
    chunks = iter_chunks(handle, chunk_bytes)
    next_line = layout.first_line

    def read_and_prepare() -> tuple[int, PreparedBatch] | None:
        nonlocal next_line
        chunk = next(chunks, None)
        if chunk is None:
            return None
        batch = layout.parse(chunk, next_line)
        # One row per physical line (schemas.cdr_csv), so the next chunk starts this many
        # lines on, without counting the chunk's newlines again.
        next_line += batch.height
        return len(chunk), prepare(stamped(batch, read_at), catalog.result())

    pending = pool.submit(read_and_prepare)

    def results() -> Iterator[tuple[int, PreparedBatch]]:
        nonlocal pending
        while True:
            upcoming = pool.submit(read_and_prepare)
            parsed = pending.result()
            if parsed is None:
                return
            yield parsed
            pending = upcoming

    return results()


def rate_file(
    cdrs: Path,
    catalog: Catalog | Callable[[], Catalog],
    out: Path,
    *,
    progress: Callable[[int], None] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    feed: Feed | None = None,
    inputs: Iterable[Path] = (),
) -> RateSummary:
    """Rate one CDR file into ``out/rated.csv``, ``rejected.csv``, ``alerts.csv``.

    ``feed``: the file's format (default canonical; ``schemas.switch_formats``).
    ``inputs``: the other files the run reads (plans, accounts): an output that is one of
    them, or the CDR file, or a symbolic link, is refused before anything is written
    (:func:`streams.cdr_files.check_outputs`).
    ``catalog`` may be a function that loads it: it is then called while the first chunk
    of the file is parsed, and before the output folder is touched (so that invalid plans
    leave no output behind). ``progress`` is called with the number of bytes read so far.
    """
    started = time.perf_counter()
    check_outputs(OutputFiles.paths(out), [cdrs, *inputs])
    handle, layout, header = open_cdr_file(cdrs, feed)
    read_at = modified_at(cdrs)
    summary = RateSummary()
    done = len(header)
    # Reading, parsing and preparing the next chunk, and writing the last one's results, run
    # in threads beside the rating (polars releases the GIL): the three overlap.
    with handle, ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as writer:
        loaded: Future[Catalog] = Future()
        prepared = _prepared_chunks(handle, layout, chunk_bytes, reader, loaded, read_at)
        try:
            if not isinstance(catalog, Catalog):
                catalog = catalog()
        except BaseException as exc:
            loaded.set_exception(exc)  # the reader stops waiting for it
            raise
        loaded.set_result(catalog)
        if progress is not None:
            progress(done)
        with OutputFiles(out) as outputs:
            state = RatingState.empty()
            written: Future[None] | None = None
            for size, batch in prepared:
                result = rate(batch, state, catalog)
                state = result.state
                if written is not None:
                    written.result()
                written = writer.submit(outputs.write, result)
                summary.add(result)
                done += size
                if progress is not None:
                    progress(done)
            if written is not None:
                written.result()
    summary.seconds = time.perf_counter() - started
    summary.warnings = layout.notes.warnings(layout.feed)
    return summary


class OutputFiles:
    """The three output files, appended chunk by chunk, header once."""

    NAMES = ("rated", "rejected", "alerts")

    def __init__(self, out: Path):
        self.out = out
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.files = {name: open_output(out / f"{name}.csv") for name in self.NAMES}
        except OSError as exc:
            raise CdrFileError(f"{out}: cannot write the output folder ({exc.strerror})") from None
        self.started = {name: False for name in self.files}

    @classmethod
    def paths(cls, out: Path) -> list[Path]:
        return [out / f"{name}.csv" for name in cls.NAMES]

    def __enter__(self) -> OutputFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # A file with no data lines still gets its three headed (empty) outputs.
        headers = {
            "rated": (*RATED_COLUMNS, *RATED_EXPLAIN_COLUMNS),
            "rejected": REJECTED_COLUMNS,
            "alerts": ALERT_COLUMNS,
        }
        for name, handle in self.files.items():
            if not self.started[name]:
                handle.write((",".join(headers[name]) + "\n").encode())
            handle.close()

    def write(self, result: RatingResult) -> None:
        self._append("rated", rated_csv_frame(result.rated))
        self._append("rejected", rejected_csv_frame(result.rejected))
        self._append("alerts", alerts_csv_frame(result.alerts))

    def _append(self, name: str, frame: pl.DataFrame) -> None:
        if frame.height == 0 and self.started[name]:
            return
        frame.write_csv(
            self.files[name], include_header=not self.started[name], datetime_format=CSV_DATETIME_FORMAT
        )
        self.started[name] = True
