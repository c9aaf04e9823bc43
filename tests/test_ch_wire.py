"""streams.clickhouse.wire: numpy-encoded String columns write the bytes clickhouse-driver would."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from clickhouse_driver.bufferedwriter import BufferedSocketWriter
from clickhouse_driver.columns.numpy.stringcolumn import NumpyStringColumn
from clickhouse_driver.columns.service import write_column
from clickhouse_driver.context import Context
from clickhouse_driver.numpy.helpers import column_chunks
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.clickhouse import wire as ch_wire


class _Socket:
    def __init__(self) -> None:
        self.data = bytearray()

    def sendall(self, data: bytes) -> None:
        self.data += data


def _written(items: np.ndarray) -> bytes:
    """What clickhouse-driver's numpy path writes for ``items`` as a ``String`` column."""
    context = Context()
    context.client_settings = {
        "use_numpy": True,
        "strings_as_bytes": False,
        "strings_encoding": "utf-8",
        "input_format_null_as_default": False,
        "low_cardinality_as_string": False,
    }
    context.server_info = None
    socket = _Socket()
    writer = BufferedSocketWriter(socket, 1 << 16)
    write_column(context, "c", "String", items, writer)
    writer.flush()
    return bytes(socket.data)


def _driver_bytes(values: list[str]) -> bytes:
    # The driver's own encoding, from a plain object array (what ch_wire replaces).
    return _written(np.array(values, dtype=object))


def test_the_driver_method_that_install_replaces_is_still_there() -> None:
    ch_wire.install()
    assert NumpyStringColumn._write_data is ch_wire._write_data
    assert ch_wire._driver_write_data.__qualname__.endswith("_write_data")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40) | st.text(min_size=120, max_size=300), max_size=60))
def test_encoded_bytes_equal_the_drivers(values: list[str]) -> None:
    ch_wire.install()
    values = [value.replace("\x00", "") for value in values]  # polars strings hold NUL too; kept simple
    encoded = ch_wire.encode_strings(pl.Series(values, dtype=pl.String))
    expected = _driver_bytes(values)
    assert encoded.wire == expected
    assert _written(encoded) == expected


def test_long_values_take_multi_byte_lengths() -> None:
    values = ["x" * 127, "y" * 128, "z" * 16_383, "w" * 16_384, "é" * 1_100_000]  # 2.2 MB: a 4-byte varint
    encoded = ch_wire.encode_strings(pl.Series(values))
    assert encoded.wire == _driver_bytes(values)
    assert encoded.wire[:1] == b"\x7f" and encoded.wire[128:130] == b"\x80\x01"


def test_a_null_is_sent_as_the_empty_string_and_no_rows_as_nothing() -> None:
    assert ch_wire.encode_strings(pl.Series(["a", None, "b"])).wire == b"\x01a\x00\x01b"
    empty = ch_wire.encode_strings(pl.Series([], dtype=pl.String))
    assert empty.wire == b"" and len(empty) == 0 and _written(empty) == b""


def test_the_driver_blocks_of_an_encoded_column_write_their_own_rows() -> None:
    ch_wire.install()
    values = [f"cdr-{n}" * (n % 7) for n in range(1_000)]
    encoded = ch_wire.encode_strings(pl.Series(values))
    blocks = [column for (column,) in column_chunks([encoded], 128)]
    assert len(blocks) > 1 and all(isinstance(block, ch_wire.EncodedStrings) for block in blocks)
    start = 0
    for block in blocks:
        rows = values[start : start + len(block)]
        assert _written(block) == _driver_bytes(rows)
        start += len(block)
    assert start == len(values)


def test_other_string_columns_still_go_the_drivers_way() -> None:
    ch_wire.install()
    assert _written(np.array(["ab", None, "é"], dtype=object)) == b"\x02ab\x00\x02\xc3\xa9"


def test_values_reads_the_strings_back() -> None:
    values = ["a", "", "é" * 100, "x" * 20_000]
    encoded = ch_wire.encode_strings(pl.Series(values))
    assert encoded.values() == [value.encode() for value in values]
    assert encoded[2:].values() == [value.encode() for value in values[2:]]


def test_rows_picked_out_of_order_are_refused_not_written_wrong() -> None:
    encoded = ch_wire.encode_strings(pl.Series(["a", "b", "c"]))
    with pytest.raises(ValueError, match="contiguous"):
        encoded[[2, 0]].block()
    with pytest.raises(ValueError, match="contiguous"):
        ch_wire.encode_strings(pl.Series(list("abcd")))[[0, 2, 1]].block()
