"""Canonical CDR CSV (spec/rating.md 2.3) into a raw batch, one row per physical line.

Pure: bytes in, a polars frame out. Every physical line after the header becomes exactly
one row carrying its 1-based ``line`` number, the 12 CDR fields as strings and a
``framing`` text that is null for a line whose shape is sound, or says why the line
cannot be read as a record (not UTF-8, a NUL byte, too long, wrong number of columns).
Field contents (times, billsec, disposition) are judged by ``rating`` (spec 4 step 1).

polars' CSV reader reads the chunk in one pass; the few lines it cannot have read as
written (their length differs from the fields read, or they hold a NUL, a quote or bad
UTF-8) are then re-read one by one from their bytes.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence

import numpy as np
import polars as pl

from schemas.columns import CDR_COLUMNS

#: A CDR line is ~150 bytes; anything past this is garbage, not a call (issue: 100 kB line).
MAX_LINE_BYTES = 4096

_REPLACEMENT_CHARACTER = "\ufffd".encode()
BATCH_SCHEMA: dict[str, pl.DataType] = {
    "line": pl.Int64(),
    **{name: pl.String() for name in CDR_COLUMNS},
    "framing": pl.String(),
}


class HeaderError(ValueError):
    """The first line is not the canonical CDR header."""


def read_header(line: bytes) -> tuple[str, ...]:
    """Column names of a CDR file's header line, in file order.

    The 12 canonical columns must all be there, each once (their order may differ).

    Examples
    --------
    >>> read_header(b"cdr_id,switch_id,caller,called,answer_number,caller_area,answer_area,"
    ...             b"start_time,answer_time,end_time,billsec,disposition\\r\\n")[:2]
    ('cdr_id', 'switch_id')
    """
    try:
        text = line.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise HeaderError("line 1: the header is not UTF-8 text") from None
    names = tuple(name.strip() for name in text.split(","))
    missing = [c for c in CDR_COLUMNS if c not in names]
    extra = sorted({n for n in names if n not in CDR_COLUMNS or names.count(n) > 1})
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing)}")
        if extra:
            detail.append(f"unexpected or repeated {', '.join(extra)}")
        raise HeaderError(
            f"line 1: the header must name the 12 CDR columns "
            f"({','.join(CDR_COLUMNS)}); {'; '.join(detail)}"
        )
    return names


def parse_csv(data: bytes) -> pl.DataFrame:
    """Parse a whole CDR file (header first) into a raw batch.

    Examples
    --------
    >>> text = ("cdr_id,switch_id,caller,called,answer_number,caller_area,answer_area,"
    ...         "start_time,answer_time,end_time,billsec,disposition\\n"
    ...         "C1,sw,138,4008001234,010,010,010,2026-03-02T09:00:00+08:00,"
    ...         "2026-03-02T09:00:05+08:00,2026-03-02T09:01:05+08:00,60,ANSWERED\\n"
    ...         "broken line\\n")
    >>> parse_csv(text.encode()).select("line", "cdr_id", "framing").rows()
    [(2, 'C1', None), (3, 'broken line', 'wrong number of columns: 1 (expected 12)')]
    """
    end = data.find(b"\n")
    header, body = (data, b"") if end < 0 else (data[: end + 1], data[end + 1 :])
    return parse_chunk(body, first_line=2, columns=read_header(header))


def parse_chunk(
    data: bytes, *, first_line: int, columns: Sequence[str] = CDR_COLUMNS
) -> pl.DataFrame:
    """Parse data lines (no header) into a raw batch numbered from ``first_line``.

    Parameters
    ----------
    data
        Whole lines of a CDR file, ``\\n`` or ``\\r\\n`` terminated (the last may lack it).
    first_line
        Line number of the first line of ``data`` in its file (the header is line 1).
    columns
        Column names in file order, as returned by :func:`read_header`.
    """
    if not data:
        return pl.DataFrame(schema=BATCH_SCHEMA)
    return read_fields(data, first_line=first_line, columns=columns).select("line", *CDR_COLUMNS, "framing")


def read_fields(
    data: bytes,
    *,
    first_line: int,
    columns: Sequence[str],
    separator: str = ",",
    quoted: bool = False,
) -> pl.DataFrame:
    """Split data lines into ``line``, one string column per name of ``columns``, ``framing``.

    The framing rules of :func:`parse_chunk` for any delimited format: one physical line
    is one record of ``len(columns)`` fields (or a ``framing`` problem). ``quoted``: most
    fields are quoted (Asterisk, FreeSWITCH), so polars reads the quotes, and only lines
    whose length differs from what was read are re-read one by one; otherwise quotes are
    rare and every line holding one is re-read.
    """
    columns = tuple(columns)
    if not data:
        return pl.DataFrame(schema={"line": pl.Int64(), **{c: pl.String() for c in columns}, "framing": pl.String()})
    # polars reads one row per physical line (blank lines included): short lines come back
    # padded, long ones truncated, bad UTF-8 replaced. Those lines are then found by
    # comparing each line's length with the fields read, and judged one by one.
    names = [f"_{i}" for i in range(len(columns))]
    starts, ends = _line_bounds(data)
    quotes = np.zeros(len(starts), dtype=np.int64)
    readable = data
    if quoted and b'"' in data:
        # Quotes per line; a line with an odd count is broken (and would swallow the next
        # lines into one field): its quotes are hidden from polars, the line judged below.
        quotes = _bytes_per_line(data, ends, ord('"'))
        if (quotes % 2).any():
            buffer = np.frombuffer(data, dtype=np.uint8).copy()
            at = np.flatnonzero(buffer == ord('"'))
            buffer[at[(quotes % 2 == 1)[np.searchsorted(ends, at)]]] = ord("'")
            readable = buffer.tobytes()
    bad_utf8 = False
    try:
        frame = _read(readable, names, "utf8", separator, quoted)
    except pl.exceptions.ComputeError:
        # Bytes that are not UTF-8 somewhere: read them replaced, find their lines below.
        frame, bad_utf8 = _read(readable, names, "utf8-lossy", separator, quoted), True
    frame = frame.rename(dict(zip(names, columns, strict=True)))
    if frame.height != len(starts):  # pragma: no cover - guards the reader's line model
        raise ValueError(f"read {frame.height} rows from {len(starts)} lines")
    read_bytes = pl.sum_horizontal(pl.col(c).str.len_bytes() for c in columns) + (len(columns) - 1)
    if quotes.any():
        # A quoted field is written as its value, its quotes doubled, between two quotes.
        read_bytes = read_bytes - pl.sum_horizontal(
            pl.col(c).str.count_matches('"', literal=True).fill_null(0) for c in columns
        )
    lengths = ends - starts
    odd = (frame.select(read_bytes.cast(pl.Int64)).to_series().to_numpy() + quotes != lengths) | (
        lengths > MAX_LINE_BYTES
    )
    suspects = set(np.flatnonzero(odd).tolist())
    suspects.update(_rows_with_bytes(data, ends, (0,) if quoted else (0, ord('"'))))
    # U+FFFD is rare: a search for its first byte (memchr) rules it out for most chunks at
    # a tenth of the cost of searching for all three bytes.
    if bad_utf8 or (_REPLACEMENT_CHARACTER[:1] in data and _REPLACEMENT_CHARACTER in data):
        replaced = pl.any_horizontal(pl.col(c).str.contains("\ufffd", literal=True) for c in columns)
        suspects.update(np.flatnonzero(frame.select(replaced).to_series().to_numpy()).tolist())
    framing = pl.Series("framing", [None] * frame.height, dtype=pl.String)
    if suspects:
        frame, framing = _judge_rows(frame, framing, data, starts, ends, sorted(suspects), columns, separator)
    line = pl.int_range(first_line, first_line + frame.height, dtype=pl.Int64, eager=True).alias("line")
    return frame.with_columns(line, framing).select("line", *columns, "framing")


def _bytes_per_line(data: bytes, ends: np.ndarray, value: int) -> np.ndarray:
    """How many bytes of ``value`` each line holds."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    hits = np.flatnonzero(buffer == value)
    return np.bincount(np.searchsorted(ends, hits), minlength=len(ends)).astype(np.int64)[: len(ends)]

def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of each physical line, without its ``\\n`` or ``\\r\\n``."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == ord("\n"))
    ends = newlines if data.endswith(b"\n") else np.append(newlines, len(data))
    starts = np.concatenate(([0], newlines[: len(ends) - 1] + 1)) if len(ends) else ends
    carriage = (ends > starts) & (buffer[np.maximum(ends - 1, 0)] == ord("\r"))
    return starts, ends - carriage


def _rows_with_bytes(data: bytes, ends: np.ndarray, values: tuple[int, ...]) -> list[int]:
    """Lines holding any of these byte values (NUL and quotes are rare: test first)."""
    present = [v for v in values if bytes([v]) in data]
    if not present:
        return []
    buffer = np.frombuffer(data, dtype=np.uint8)
    hits = np.flatnonzero(np.isin(buffer, present))
    return np.unique(np.searchsorted(ends, hits)).tolist()


def _read(data: bytes, names: list[str], encoding: str, separator: str = ",", quoted: bool = False) -> pl.DataFrame:
    # The schema names the columns (no header line glued in front: that copies the chunk);
    # extra/missing columns say that the first line's width is no more binding than any
    # other's (the reader reads just as it would under a header line of these names).
    return pl.read_csv(
        data,
        has_header=False,
        schema={name: pl.String() for name in names},
        extra_columns="ignore",
        missing_columns="insert",
        separator=separator,
        quote_char='"' if quoted else None,
        truncate_ragged_lines=True,
        empty_string_is_null=False,
        encoding=encoding,
    )


def _judge_rows(
    frame: pl.DataFrame,
    framing: pl.Series,
    data: bytes,
    starts: np.ndarray,
    ends: np.ndarray,
    rows: list[int],
    columns: tuple[str, ...],
    separator: str = ",",
) -> tuple[pl.DataFrame, pl.Series]:
    """Re-read the suspect lines from their bytes; broken ones keep only their first field."""
    broken: dict[int, str] = {}
    quoted: dict[int, list[str]] = {}
    for row in rows:
        problem, fields = _judge_line(data[starts[row] : ends[row]], len(columns), separator)
        if problem is not None:
            broken[row] = problem
        elif fields is not None:
            quoted[row] = fields
    # A broken line's other fields are never read (rating stops at its framing), so only
    # its first field, which rejected.csv reports (spec 6), is rewritten.
    values: dict[str, dict[int, str]] = {name: {} for name in columns}
    for row, fields in quoted.items():
        for name, value in zip(columns, fields, strict=True):
            values[name][row] = value
    for row in broken:
        values[columns[0]][row] = _first_field(data[starts[row] : ends[row]], separator)
    frame = frame.with_columns(
        frame.get_column(name).scatter(list(patch), pl.Series(list(patch.values()), dtype=pl.String))
        for name, patch in values.items()
        if patch
    )
    if broken:
        framing = framing.scatter(list(broken), pl.Series(list(broken.values()), dtype=pl.String))
    return frame, framing


def _judge_line(raw: bytes, width: int, separator: str = ",") -> tuple[str | None, list[str] | None]:
    """(framing problem, fields when the line is sound but needs the CSV quoting rules)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 (byte {exc.start + 1})", None
    if "\x00" in text:
        return "contains a NUL byte", None
    if "\ufffd" in text:
        # U+FFFD is what a lossy decoder leaves where bytes were lost before us.
        return "holds U+FFFD, the mark of bytes lost before this file", None
    if len(raw) > MAX_LINE_BYTES:
        return f"line longer than {MAX_LINE_BYTES} bytes ({len(raw)} bytes)", None
    if '"' in text:
        try:
            fields = next(csv.reader([text], strict=True, delimiter=separator))
        except (csv.Error, StopIteration):
            return "unbalanced quotes", None
    else:
        fields = text.split(separator)
    if len(fields) != width:
        return f"wrong number of columns: {len(fields)} (expected {width})", None
    return None, fields if '"' in text else None


def _first_field(raw: bytes, separator: str = ",") -> str:
    text = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return text.split(separator, 1)[0][:200]
