"""CDR files: opened with their header checked, read in chunks of whole lines; and the
files written from them, never over an input nor through a link.

Shared by every path that reads a file (``rate``, ``ingest``, ``ingest --tail``) and every
command that writes into an ``--out`` (``rate``, ``export``, ``rerate``, ``report html``)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
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


# --------------------------------------------------------------------------- outputs

_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


def check_outputs(outputs: Iterable[Path], inputs: Iterable[Path] = ()) -> None:
    """Refuse, before anything is written, an output that would destroy an input or write
    through a link (docs/rules.md, "Output files").

    An output that exists and is a symbolic link is refused (a link planted in an output
    folder would have the command write wherever it points); so is one that is the same
    file as an input (same device and inode, also through a hard link or a link given as
    the input): ``rate X --out DIR`` where ``DIR/rated.csv`` is ``X`` would truncate the
    file it is reading. Raises :class:`CdrFileError` naming both.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "rated.csv").write_text("cdr_id\\n")
    7
    >>> check_outputs([folder / "rated.csv"], [folder / "rated.csv"])
    Traceback (most recent call last):
    ...
    streams.cdr_files.CdrFileError: ...rated.csv: writing it would overwrite the input ...rated.csv; choose another --out
    """
    taken: dict[tuple[int, int], Path] = {}
    for path in inputs:
        try:
            found = os.stat(path)  # an input given through a link is the file it points to
        except OSError:
            continue
        taken[(found.st_dev, found.st_ino)] = path
        if stat.S_ISDIR(found.st_mode):  # a folder of inputs (plans): every file in it
            for child in Path(path).iterdir():
                try:
                    inner = os.stat(child)
                except OSError:
                    continue
                taken[(inner.st_dev, inner.st_ino)] = child
    for path in outputs:
        try:
            found = os.lstat(path)
        except OSError:  # not there (or its folder is not): nothing it could overwrite
            continue
        if stat.S_ISLNK(found.st_mode):
            raise CdrFileError(
                f"{path}: is a symbolic link (to {os.readlink(path)}); cdrflow does not write through links in "
                "its output folder: remove it or choose another --out"
            )
        source = taken.get((found.st_dev, found.st_ino))
        if source is not None:
            raise CdrFileError(f"{path}: writing it would overwrite the input {source}; choose another --out")


def open_output(path: Path) -> IO[bytes]:
    """``path`` opened for writing (created or emptied), refusing to follow a symbolic link
    put there after :func:`check_outputs` (``OSError``, ``ELOOP``)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NO_FOLLOW | os.O_CLOEXEC, 0o666)
    return os.fdopen(descriptor, "wb")


def replace_output(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` whole or not at all: ``write`` fills a hidden ``.NAME.partial`` beside
    it (never followed through a link), which then replaces ``path`` (a link there is
    replaced, not followed)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW | os.O_CLOEXEC, 0o666)
    with os.fdopen(descriptor, "wb") as handle:
        write(handle)
    partial.replace(path)
