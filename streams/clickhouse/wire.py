"""String columns for clickhouse-driver's numpy inserts, encoded by numpy instead of per row.

ClickHouse's native protocol sends a ``String`` column as each value's length (an
unsigned LEB128 varint) followed by its bytes. clickhouse-driver's numpy path makes that
from an object array, one Python object at a time: it checks every value for null,
copies the array, turns it into a list and writes each string. On the sink's rated calls
(a dozen string columns) that was over half of the client's CPU time of an insert.

:func:`encode_strings` builds the wire bytes of a whole polars ``String`` column with a
handful of vectorised numpy operations, and returns an :class:`EncodedStrings`: an
``int64`` array of row numbers (0, 1, ...) that carries those bytes. The driver slices it
into blocks of ``insert_block_size`` rows like any numpy column (a slice keeps the bytes
and holds its own row numbers), and :func:`install` teaches the driver's numpy string
column to write such a slice's bytes as they are. Any other value goes the driver's own
way, unchanged.

:func:`install` replaces one method of a clickhouse-driver class
(``NumpyStringColumn._write_data``, in ``clickhouse_driver/columns/numpy/stringcolumn.py``
since 0.2.0): a driver upgrade must keep that name, which
``tests/test_ch_wire.py`` checks, together with bytes equal to the driver's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from clickhouse_driver.columns.numpy.stringcolumn import NumpyStringColumn

_VARINT_BOUNDS = tuple(np.uint64(1) << np.uint64(7 * k) for k in range(1, 10))


class EncodedStrings(np.ndarray):
    """Row numbers of a string column whose native-protocol bytes are :attr:`wire`.

    Row ``i``'s length and bytes end at ``wire[ends[i]]``. A slice (as the driver makes
    per block) shares ``wire`` and ``ends`` and holds the numbers of its own rows, which
    are consecutive.
    """

    wire: bytes
    ends: np.ndarray

    def __array_finalize__(self, obj: Any) -> None:
        self.wire = getattr(obj, "wire", b"")
        self.ends = getattr(obj, "ends", np.zeros(0, np.uint64))

    def block(self) -> bytes:
        """The wire bytes of the rows this array holds."""
        if len(self) == 0:
            return b""
        first, last = int(self[0]), int(self[-1])
        if not (np.diff(self.view(np.ndarray)) == 1).all():
            raise ValueError("EncodedStrings: only a contiguous slice of rows can be written")
        start = int(self.ends[first - 1]) if first else 0
        return self.wire[start : int(self.ends[last])]

    def values(self) -> list[bytes]:
        """The strings of the rows this array holds, read back from the wire bytes (slow:
        for tests and for looking at a column)."""
        block, values, at = self.block(), [], 0
        while at < len(block):
            length, shift = 0, 0
            while True:
                byte = block[at]
                at += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            values.append(block[at : at + length])
            at += length
        return values


def encode_strings(series: pl.Series) -> EncodedStrings:
    """``series`` (polars ``String``; a null is sent as ``''``) as ClickHouse ``String``
    column bytes, carried by an :class:`EncodedStrings` of its row numbers.

    Examples
    --------
    >>> encoded = encode_strings(pl.Series(["ab", "", "é"]))
    >>> encoded.wire
    b'\\x02ab\\x00\\x02\\xc3\\xa9'
    >>> encoded[1:].block()
    b'\\x00\\x02\\xc3\\xa9'
    """
    series = series.fill_null("")
    lengths = series.str.len_bytes().cast(pl.UInt64).to_numpy()
    data = np.frombuffer(series.str.join("").item().encode(), np.uint8) if len(series) else np.zeros(0, np.uint8)
    sizes = np.ones(len(lengths), np.uint64)  # bytes of each length's varint
    for bound in _VARINT_BOUNDS:
        sizes += lengths >= bound
    ends = np.cumsum(sizes + lengths, dtype=np.uint64)
    starts = ends - sizes - lengths
    wire = np.empty(int(ends[-1]) if len(ends) else 0, np.uint8)
    is_data = np.ones(len(wire), bool)
    for k in range(int(sizes.max()) if len(sizes) else 0):
        rows = np.flatnonzero(sizes > k)
        at = starts[rows] + np.uint64(k)
        seven_bits = (lengths[rows] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (sizes[rows] > k + 1).astype(np.uint64) << np.uint64(7)
        wire[at] = seven_bits | more
        is_data[at] = False
    wire[is_data] = data
    carrier = np.arange(len(lengths), dtype=np.int64).view(EncodedStrings)
    carrier.wire = wire.tobytes()
    carrier.ends = ends
    return carrier


_driver_write_data = NumpyStringColumn._write_data


def _write_data(self: NumpyStringColumn, items: Any, buf: Any) -> None:
    if isinstance(items, EncodedStrings):
        buf.write(items.block())
    else:
        _driver_write_data(self, items, buf)


def install() -> None:
    """Let clickhouse-driver's numpy string columns write :class:`EncodedStrings` as they
    are (idempotent)."""
    NumpyStringColumn._write_data = _write_data  # type: ignore[method-assign]
