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
from collections.abc import Collection, Sequence
from typing import Final

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


#: The ``framing`` of a line a format says is no record (a comment, a blank line, a
#: fixed-width file's header or trailer): it gets no output (``records_only``).
NOT_A_RECORD: Final[str] = "not a record"


def records_only(batch: pl.DataFrame) -> pl.DataFrame:
    """The rows of a raw batch that are records (every row, for most formats)."""
    if batch.height == 0 or not (batch.get_column("framing") == NOT_A_RECORD).any():
        return batch
    return batch.filter(pl.col("framing").ne_missing(NOT_A_RECORD))


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
    widths: Collection[int] | None = None,
    used: Collection[int] | None = None,
    lenient: bool = False,
) -> pl.DataFrame:
    """Split data lines into ``line``, one string column per name of ``columns``, ``width``,
    ``fields_read`` and ``framing``.

    The framing rules of :func:`parse_chunk` for any delimited format: one physical line
    is one record of ``len(columns)`` fields, or of any count in ``widths`` (the fields a
    shorter line lacks are empty, ``width`` says how many it had), or a ``framing``
    problem. ``quoted``: most fields are quoted (Asterisk, FreeSWITCH), so polars reads
    the quotes, and only lines whose length differs from what was read are re-read one by
    one; otherwise quotes are rare and every line holding one is re-read. Nothing a line
    holds can make this raise: a line polars cannot read is read on its own, by the CSV
    rules, or with ``lenient`` by the rules of switches that do not escape their quotes
    (:func:`split_line`).

    ``used``: the positions (from 0) of the columns a format takes values from; bytes
    that are not UTF-8, a NUL or U+FFFD make a line malformed only in those (all columns
    when None). ``fields_read`` is false where no field of the line can be trusted (its
    quotes are broken, or it is too long).
    """
    columns = tuple(columns)
    allowed = frozenset(widths or (len(columns),))
    if max(allowed) > len(columns) or min(allowed) < 1:  # pragma: no cover - a caller's mistake
        raise ValueError(f"widths {sorted(allowed)} do not fit {len(columns)} columns")
    judged = frozenset(range(len(columns))) if used is None else frozenset(used)
    schema = {
        "line": pl.Int64(), **{c: pl.String() for c in columns}, "width": pl.Int32(),
        "fields_read": pl.Boolean(), "framing": pl.String(),
    }  # fmt: skip
    if not data:
        return pl.DataFrame(schema=schema)
    # polars reads one row per physical line (blank lines included): short lines come back
    # padded with empty fields, long ones truncated, bad UTF-8 replaced. The fields a line
    # holds follow from its length and what was read (_widths); lines where that is not a
    # width of the format, or that hold a NUL, a stray quote or bad bytes, are judged one
    # by one.
    names = [f"_{i}" for i in range(len(columns))]
    starts, ends = line_bounds(data)
    quotes = np.zeros(len(starts), dtype=np.int64)
    readable = data
    if quoted and b'"' in data:
        # Quotes per line; a line with an odd count is broken for polars (and would swallow
        # the next lines into one field): its quotes are hidden from polars, the line is
        # judged below.
        quotes = _bytes_per_line(data, ends, ord('"'))
        if (quotes % 2).any():
            buffer = np.frombuffer(data, dtype=np.uint8).copy()
            at = np.flatnonzero(buffer == ord('"'))
            buffer[at[(quotes % 2 == 1)[np.searchsorted(ends, at)]]] = ord("'")
            readable = buffer.tobytes()
    frame, unread, bad_utf8 = _read_lines(readable, starts, ends, names, separator, quoted)
    frame = frame.rename(dict(zip(names, columns, strict=True)))
    # The bytes a field of a line takes: its value, its quotes doubled (a quoted field is
    # its value between two quotes), a separator between two fields.
    value_bytes = pl.sum_horizontal(pl.col(c).str.len_bytes() for c in columns)
    if quotes.any():
        value_bytes = value_bytes - pl.sum_horizontal(
            pl.col(c).str.count_matches('"', literal=True).fill_null(0) for c in columns
        )
    lengths = ends - starts
    width = lengths - frame.select(value_bytes.cast(pl.Int64)).to_series().to_numpy() - quotes + 1
    odd = ~np.isin(width, list(allowed)) | (lengths > MAX_LINE_BYTES)
    suspects = set(np.flatnonzero(odd).tolist()) | unread
    suspects.update(_rows_with_bytes(data, ends, (0,) if quoted else (0, ord('"'))))
    if quoted:
        # `, "x"`: polars reads the blank and the quotes as the value; the line is split again.
        suspects.update(_rows_with_sequence(data, ends, f'{separator} "'.encode()))
    # U+FFFD is rare: a search for its first byte (memchr) rules it out for most chunks at
    # a tenth of the cost of searching for all three bytes.
    if bad_utf8 or (_REPLACEMENT_CHARACTER[:1] in data and _REPLACEMENT_CHARACTER in data):
        replaced = pl.any_horizontal(pl.col(c).str.contains("\ufffd", literal=True) for c in columns)
        suspects.update(np.flatnonzero(frame.select(replaced).to_series().to_numpy()).tolist())
    framing = pl.Series("framing", [None] * frame.height, dtype=pl.String)
    trusted = pl.Series("fields_read", [True] * frame.height, dtype=pl.Boolean)
    widths_read = pl.Series("width", np.clip(width, 0, len(columns)), dtype=pl.Int32)
    if suspects:
        frame, framing, trusted, widths_read = _judge_rows(
            frame, framing, trusted, widths_read, data, starts, ends, sorted(suspects), columns,
            separator, allowed, judged, lenient,
        )  # fmt: skip
    line = pl.int_range(first_line, first_line + frame.height, dtype=pl.Int64, eager=True).alias("line")
    return frame.with_columns(line, widths_read, trusted, framing).select(*schema)


def _bytes_per_line(data: bytes, ends: np.ndarray, value: int) -> np.ndarray:
    """How many bytes of ``value`` each line holds."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    hits = np.flatnonzero(buffer == value)
    return np.bincount(np.searchsorted(ends, hits), minlength=len(ends)).astype(np.int64)[: len(ends)]

def line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
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


def _rows_with_sequence(data: bytes, ends: np.ndarray, sequence: bytes) -> list[int]:
    """Lines holding ``sequence`` (rare: found with bytes.find)."""
    hits = []
    at = data.find(sequence)
    while at >= 0:
        hits.append(at)
        at = data.find(sequence, at + 1)
    return np.unique(np.searchsorted(ends, np.array(hits, dtype=np.int64))).tolist() if hits else []


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


def _read_lines(
    data: bytes, starts: np.ndarray, ends: np.ndarray, names: list[str], separator: str, quoted: bool
) -> tuple[pl.DataFrame, set[int], bool]:
    """polars' read of every line: ``(frame, rows it could not read, bytes not UTF-8)``.

    One read of the whole chunk, as a rule. When polars refuses it (a quote in the middle
    of a quoted field, as FreeSWITCH writes a caller name holding one) or reads another
    number of rows, the chunk is read in halves, and so on down to the lines it refuses:
    those come back empty, to be judged one by one. A few bad lines cost a few reads, not
    a traceback.
    """
    encoding = "utf8"
    try:
        frame = _read(data, names, encoding, separator, quoted)
        if frame.height == len(starts):
            return frame, set(), False
    except pl.exceptions.PolarsError:
        pass
    bad_utf8 = False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        # Bytes that are not UTF-8 somewhere: read them replaced, find their lines later.
        encoding, bad_utf8 = "utf8-lossy", True
    unread: set[int] = set()
    frames: list[pl.DataFrame] = []
    pending = [(0, len(starts))]
    while pending:
        low, high = pending.pop()
        piece = data[starts[low] : (starts[high] if high < len(starts) else len(data))]
        try:
            frame = _read(piece, names, encoding, separator, quoted)
            if frame.height == high - low:
                frames.append(frame.with_columns(pl.lit(low, dtype=pl.Int64).alias("_at")))
                continue
        except pl.exceptions.PolarsError:
            pass
        if high - low == 1:
            unread.add(low)
            empty = pl.DataFrame({name: [""] for name in names}, schema={name: pl.String() for name in names})
            frames.append(empty.with_columns(pl.lit(low, dtype=pl.Int64).alias("_at")))
            continue
        middle = (low + high) // 2
        pending += [(middle, high), (low, middle)]
    frame = pl.concat(frames).sort("_at", maintain_order=True).drop("_at")
    return frame, unread, bad_utf8


def _judge_rows(
    frame: pl.DataFrame,
    framing: pl.Series,
    trusted: pl.Series,
    widths: pl.Series,
    data: bytes,
    starts: np.ndarray,
    ends: np.ndarray,
    rows: list[int],
    columns: tuple[str, ...],
    separator: str,
    allowed: frozenset[int],
    used: frozenset[int],
    lenient: bool = False,
) -> tuple[pl.DataFrame, pl.Series, pl.Series, pl.Series]:
    """Re-read the suspect lines from their bytes: their fields, width and problem."""
    problems: dict[int, str] = {}
    untrusted: list[int] = []
    read: dict[int, list[str]] = {}
    for row in rows:
        raw = data[starts[row] : ends[row]]
        problem, fields = judge_line(raw, allowed, separator, used, lenient=lenient)
        if problem is not None:
            problems[row] = problem
        if fields is None:
            # Nothing of the line can be trusted; rejected.csv still shows its first field.
            untrusted.append(row)
            fields = [_first_field(raw, separator)]
        read[row] = fields
    width = len(columns)
    values: dict[str, dict[int, str]] = {name: {} for name in columns}
    for row, fields in read.items():
        padded = (fields + [""] * width)[:width]
        for name, value in zip(columns, padded, strict=True):
            values[name][row] = value
    frame = frame.with_columns(
        frame.get_column(name).scatter(list(patch), pl.Series(list(patch.values()), dtype=pl.String))
        for name, patch in values.items()
        if patch
    )
    counts = [0 if row in untrusted else min(len(fields), width) for row, fields in read.items()]
    widths = widths.scatter(list(read), pl.Series(counts, dtype=pl.Int32))
    if problems:
        framing = framing.scatter(list(problems), pl.Series(list(problems.values()), dtype=pl.String))
    if untrusted:
        trusted = trusted.scatter(untrusted, pl.Series([False] * len(untrusted), dtype=pl.Boolean))
    return frame, framing, trusted, widths


def judge_line(
    raw: bytes,
    widths: Collection[int],
    separator: str = ",",
    used: Collection[int] | None = None,
    *,
    lenient: bool = True,
) -> tuple[str | None, list[str] | None]:
    """``(problem or None, fields or None)`` of one line, read as a switch wrote it.

    Bytes that are not UTF-8 are read as U+FFFD; they, a NUL or a U+FFFD make the line
    malformed only in a field at a position of ``used`` (all when None): a switch's
    garbled caller name in a column no one reads does not lose the call. Fields are None
    when the line cannot be split at all (its quotes are broken) or is too long.

    Examples
    --------
    >>> judge_line(b'"Smith, John","1001"', {2})
    (None, ['Smith, John', '1001'])
    >>> judge_line(b'""Smith, John"","1001"', {2})
    (None, ['"Smith, John"', '1001'])
    >>> judge_line(b'"a","b', {2})
    ('unbalanced quotes', None)
    >>> judge_line(bytes([120, 44, 165, 44, 121]), {3}, used={0, 2})[0] is None  # bad byte, unread column
    True
    """
    if len(raw) > MAX_LINE_BYTES:
        return f"line longer than {MAX_LINE_BYTES} bytes ({len(raw)} bytes)", None
    text = raw.decode("utf-8", errors="replace")
    fields = split_line(text, separator, widths, lenient=lenient)
    if fields is None:
        return "unbalanced quotes", None
    if len(fields) not in widths:
        return f"wrong number of columns: {len(fields)} (expected {_expected(widths)})", fields
    for position, value in enumerate(fields):
        if used is not None and position not in used:
            continue
        if "\x00" in value:
            return "contains a NUL byte", fields
        if "\ufffd" in value:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"not UTF-8 (byte {exc.start + 1})", fields
            # U+FFFD is what a lossy decoder leaves where bytes were lost before us.
            return "holds U+FFFD, the mark of bytes lost before this file", fields
    return None, fields


def split_line(
    text: str, separator: str = ",", widths: Collection[int] = (), *, lenient: bool = True
) -> list[str] | None:
    """The fields of one line; None when its quotes cannot be made sense of.

    The CSV rules first (RFC 4180: ``"a,b"`` is one field, ``""`` inside quotes is one
    quote). With ``lenient``, a line they refuse, or that they split into a count not in
    ``widths``, is read as switches write (FreeSWITCH puts ``"${caller_id_name}"`` around a name without
    escaping it): a quoted field ends at the quote that stands before a separator or the
    end of the line, and a quote anywhere else is part of the value; a field of spaces
    before a quote is a quoted field (``, "x"``). Failing that, a line of quoted fields
    only is cut at each ``"<separator>"``.

    Examples
    --------
    >>> split_line('"a,b",c')
    ['a,b', 'c']
    >>> split_line('"Smith "JJ" John","1001"', widths={2})
    ['Smith "JJ" John', '1001']
    >>> split_line('"Smith", John","1001"', widths={2})
    ['Smith", John', '1001']
    >>> split_line('"a", "b"', widths={2})
    ['a', 'b']
    """
    strict: list[str] | None = None
    if '"' not in text:
        return text.split(separator)
    try:
        strict = next(csv.reader([text], strict=True, delimiter=separator))
    except (csv.Error, StopIteration):
        strict = None
    # `, "x"`: a quoted field after a blank, which the CSV rules read as blank + quotes.
    spaced = strict is not None and any(f[:1] == " " and f.lstrip(" ")[:1] == '"' for f in strict)
    if strict is not None and not spaced and (not widths or len(strict) in widths):
        return strict
    if not lenient:
        return strict
    lenient = _split_lenient(text, separator)
    if lenient is not None and (not widths or len(lenient) in widths):
        return lenient
    quote_sep = '"' + separator + '"'
    if len(text) >= 2 and text[0] == "\"" and text[-1] == "\"":
        cut = text[1:-1].split(quote_sep)
        if not widths or len(cut) in widths:
            return cut
    return strict if strict is not None else lenient


def _split_lenient(text: str, separator: str) -> list[str] | None:
    fields: list[str] = []
    at, end = 0, len(text)
    while True:
        start = at
        while at < end and text[at] == " ":
            at += 1
        if at < end and text[at] == '"':
            search = at + 1
            while True:
                close = text.find('"', search)
                if close < 0:
                    return None  # a quote opened and never closed
                if close + 1 == end or text[close + 1] == separator:
                    break
                search = close + 1
            fields.append(text[at + 1 : close].replace('""', '"'))
            at = close + 1
        else:
            at = start
            cut = text.find(separator, at)
            fields.append(text[at:] if cut < 0 else text[at:cut])
            at = end if cut < 0 else cut
        if at >= end:
            return fields
        at += 1  # the separator
        if at == end:
            fields.append("")
            return fields


def _expected(widths: Collection[int]) -> str:
    ordered = sorted(widths)
    if len(ordered) == 1:
        return str(ordered[0])
    return ", ".join(str(w) for w in ordered[:-1]) + f" or {ordered[-1]}"


def _first_field(raw: bytes, separator: str = ",") -> str:
    text = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return text.split(separator, 1)[0][:200]
