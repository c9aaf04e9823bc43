"""CDR files: opened with their header checked, read in chunks of whole lines.

Shared by every path that reads a file (``rate``, ``ingest``, ``ingest --tail``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import polars as pl

from schemas.cdr_csv import HeaderError
from schemas.switch_formats import Feed, Layout

CHUNK_BYTES = 32 << 20


class CdrFileError(Exception):
    """A CDR file that cannot be rated at all (missing, unreadable, no header)."""


def iter_chunks(handle: IO[bytes], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Whole lines of ``handle`` in chunks of about ``chunk_bytes``.

    Each chunk is one read completed to the end of its last line (one copy of the bytes,
    not three: a copy of 32 MB costs as much in page faults as in copying).
    """
    while True:
        block = handle.read(chunk_bytes)
        if not block:
            return
        if not block.endswith(b"\n"):
            block += handle.readline()
        yield block


def open_cdr_file(path: Path, feed: Feed | None = None) -> tuple[IO[bytes], Layout, bytes]:
    """Open a CDR file of ``feed``'s format (default canonical) and read its header:
    ``(handle at the first data line, layout, header line)``; a headerless format's
    header line is ``b""``.

    :class:`CdrFileError` names the file and says what is wrong (missing, a folder,
    unreadable, empty, not the header the format needs).
    """
    feed = feed or Feed.canonical()
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise CdrFileError(f"{path}: CDR file not found") from None
    except IsADirectoryError:
        raise CdrFileError(f"{path}: is a folder, expected a CDR CSV file") from None
    except OSError as exc:
        raise CdrFileError(f"{path}: cannot be read ({exc.strerror})") from None
    if not feed.has_header:
        return handle, feed.layout(None), b""
    header = handle.readline()
    try:
        if not header.strip():
            raise CdrFileError(f"{path}: line 1: the file is empty; expected the CDR header line")
        try:
            return handle, feed.layout(header), header
        except HeaderError as exc:
            raise CdrFileError(f"{path}: {exc}") from None
    except CdrFileError:
        handle.close()
        raise


def modified_at(path: Path) -> datetime:
    """When a file was last written (UTC): the instant its lines were known to exist.

    ``rate`` and ``ingest`` stamp it on every line of the file as ``read_at``: a call
    cannot have happened after the switch wrote it (``rating.bounds``), and the stamp is
    the same whichever of the two reads the file, however often."""
    return datetime.fromtimestamp(path.stat().st_mtime_ns // 1_000 / 1_000_000, UTC).replace(microsecond=0)


def stamped(batch: pl.DataFrame, read_at: datetime | pl.Series) -> pl.DataFrame:
    """The batch with ``read_at`` (UTC, to the millisecond) on every line, or per line."""
    if isinstance(read_at, datetime):
        value = pl.lit(read_at.astimezone(UTC).replace(tzinfo=None), dtype=pl.Datetime("ms")).dt.replace_time_zone("UTC")
        return batch.with_columns(value.alias("read_at"))
    return batch.with_columns(read_at.cast(pl.Datetime("ms", "UTC")).alias("read_at"))
