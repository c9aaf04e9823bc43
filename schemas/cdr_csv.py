"""Canonical CDR CSV (spec/rating.md 2.3) into a raw batch, one row per physical line.

Pure: bytes in, a polars frame out. Every physical line after the header becomes exactly
one row carrying its 1-based ``line`` number, the 12 CDR fields as strings and a
``framing`` text that is null for a line whose shape is sound, or says why the line
cannot be read as a record (not UTF-8, a NUL byte, too long, wrong number of columns).
Field contents (times, billsec, disposition) are judged by ``rating`` (spec 4 step 1).

The common case, a clean file, is parsed by polars' CSV reader in one pass; only a chunk
that holds suspect bytes takes the slower line-by-line path, and only its suspect lines
are handled in Python.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence

import numpy as np
import polars as pl

from schemas.columns import CDR_COLUMNS

#: A CDR line is ~150 bytes; anything past this is garbage, not a call (issue: 100 kB line).
MAX_LINE_BYTES = 4096

BATCH_SCHEMA: dict[str, pl.DataType] = {
    "line": pl.Int64(),
    **{name: pl.String() for name in CDR_COLUMNS},
    "framing": pl.String(),
}
_PLACEHOLDER = b"," * (len(CDR_COLUMNS) - 1)


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
    columns = tuple(columns)
    if not data:
        return pl.DataFrame(schema=BATCH_SCHEMA)
    line_count = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    frame = None
    if not _suspect(data):
        frame = _read_clean(data, columns)
        # A short line comes back padded with empty fields, a blank line as all empty:
        # both look like an empty last field, rare in real files, so check those carefully.
        if frame is not None and (
            frame.height != line_count or (frame.get_column(columns[-1]) == "").any()
        ):
            frame = None
    if frame is None:
        frame = _read_dirty(data, columns, line_count)
    elif frame.height:
        frame = frame.with_columns(framing=_long_line_check(columns))
    line = pl.int_range(first_line, first_line + frame.height, dtype=pl.Int64).alias("line")
    return frame.select(line, *CDR_COLUMNS, "framing")


def _suspect(data: bytes) -> bool:
    # Bytes polars' reader would read differently from a person: NUL, quotes, invalid
    # UTF-8. Each test is one C-speed pass over the chunk.
    if b"\x00" in data or b'"' in data:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _read_clean(data: bytes, columns: tuple[str, ...]) -> pl.DataFrame | None:
    try:
        return pl.read_csv(
            data,
            has_header=False,
            new_columns=list(columns),
            schema_overrides={name: pl.String for name in columns},
            infer_schema=False,
            quote_char=None,
            empty_string_is_null=False,
            raise_if_empty=False,
        )
    except pl.exceptions.PolarsError:
        return None  # e.g. a line with too many columns


def _long_line_check(columns: tuple[str, ...]) -> pl.Expr:
    # A short line is padded with empty fields by the reader; a missing field is then an
    # empty disposition, which rating rejects as malformed too (spec 4 step 1).
    length = pl.sum_horizontal(pl.col(c).str.len_bytes() for c in columns) + (len(columns) - 1)
    return (
        pl.when(length > MAX_LINE_BYTES)
        .then(pl.format("line longer than {} bytes ({} bytes)", pl.lit(MAX_LINE_BYTES), length))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def _read_dirty(data: bytes, columns: tuple[str, ...], line_count: int) -> pl.DataFrame:
    """Line by line for the suspect lines only; clean lines still go through polars."""
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    framing: dict[int, str] = {}
    first_fields: dict[int, str] = {}
    quoted: dict[int, list[str]] = {}
    for index in _suspect_lines(data, lines):
        raw = lines[index].removesuffix(b"\r")
        problem, fields = _judge_line(raw, len(columns))
        if problem is not None:
            framing[index] = problem
            # Keep the raw first field of a broken line: rejected.csv reports it (spec 6).
            first_fields[index] = _first_field(raw)
            lines[index] = _PLACEHOLDER
        elif fields is not None:
            quoted[index] = fields
            lines[index] = _PLACEHOLDER
    frame = _read_clean(b"\n".join(lines), columns)
    assert frame is not None and frame.height == line_count, "suspect lines were not all replaced"
    frame = frame.with_columns(framing=_long_line_check(columns))
    if quoted:
        patch = pl.DataFrame(
            [[*fields, None] for fields in quoted.values()],
            schema=[*columns, "framing"],
            orient="row",
        ).with_columns(_row=pl.Series(list(quoted), dtype=pl.UInt32))
        frame = frame.with_row_index("_row").update(patch, on="_row").drop("_row")
    if framing:
        row = pl.col("_row")
        broken = row.is_in(list(framing))
        frame = (
            frame.with_row_index("_row")
            .with_columns(
                pl.when(broken).then(pl.lit(None, dtype=pl.String)).otherwise(pl.col(c)).alias(c)
                for c in columns
            )
            .with_columns(
                framing=pl.coalesce(
                    row.replace_strict(framing, default=None, return_dtype=pl.String),
                    pl.col("framing"),
                ),
                cdr_id=pl.coalesce(
                    row.replace_strict(first_fields, default=None, return_dtype=pl.String),
                    pl.col("cdr_id"),
                ),
            )
            .drop("_row")
        )
    return frame


def _suspect_lines(data: bytes, lines: list[bytes]) -> list[int]:
    """Indices of lines with a NUL, a quote, a non-UTF-8 byte or too many columns."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buffer == ord("\n"))
    suspects: set[int] = set()
    for byte in (0, ord('"')):
        positions = np.flatnonzero(buffer == byte)
        suspects.update(np.searchsorted(ends, positions).tolist())
    high = np.flatnonzero(buffer >= 0x80)
    if high.size:
        for index in np.unique(np.searchsorted(ends, high)).tolist():
            try:
                lines[index].decode("utf-8")
            except UnicodeDecodeError:
                suspects.add(index)
    # More separators than columns makes polars' reader refuse the whole chunk.
    commas = np.flatnonzero(buffer == ord(","))
    per_line = np.bincount(np.searchsorted(ends, commas), minlength=len(lines) + 1)
    suspects.update(np.flatnonzero(per_line[: len(lines)] != len(CDR_COLUMNS) - 1).tolist())
    return sorted(i for i in suspects if i < len(lines))


def _judge_line(raw: bytes, width: int) -> tuple[str | None, list[str] | None]:
    """(framing problem, fields when the line is sound but needs the CSV quoting rules)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 (byte {exc.start + 1})", None
    if "\x00" in text:
        return "contains a NUL byte", None
    if len(raw) > MAX_LINE_BYTES:
        return f"line longer than {MAX_LINE_BYTES} bytes ({len(raw)} bytes)", None
    if '"' in text:
        try:
            fields = next(csv.reader([text], strict=True))
        except (csv.Error, StopIteration):
            return "unbalanced quotes", None
    else:
        fields = text.split(",")
    if len(fields) != width:
        return f"wrong number of columns: {len(fields)} (expected {width})", None
    return None, fields if '"' in text else None


def _first_field(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return text.split(",", 1)[0][:200]
