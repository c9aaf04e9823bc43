"""``schemas.messages.cdr_chunks_frame``: a batch decoded at once equals the messages decoded one by one."""

from __future__ import annotations

import json

import polars as pl
import pytest

from schemas.columns import CDR_COLUMNS
from schemas.messages import cdr_chunk_frame, cdr_chunk_value, cdr_chunks_frame


def _chunk(first_line: int, lines: int, source: str = "f.csv", ingest_id: str = "i1") -> bytes:
    frame = pl.DataFrame(
        {"line": list(range(first_line, first_line + lines)), **{c: [f"{c}-{first_line + n}" for n in range(lines)] for c in CDR_COLUMNS}}
    )
    return json.dumps(cdr_chunk_value(source, frame, ingest_id)).encode()


def _one_by_one(values: list[bytes | None]) -> tuple[pl.DataFrame, list[int], list[int]]:
    frames, heights, errors = [], [], []
    for index, value in enumerate(values):
        try:
            frame = cdr_chunk_frame(json.loads(value if value is not None else b""))
        except Exception:
            errors.append(index)
            heights.append(0)
            continue
        frames.append(frame)
        heights.append(frame.height)
    return pl.concat(frames, how="vertical"), heights, errors


def _with_wrong_type(field: str, bad: object) -> bytes:
    value = json.loads(_chunk(50, 2))
    value[field][1] = bad
    return json.dumps(value).encode()


GARBAGE = [
    b"\xff\xfe not json",
    None,
    b'{"v": 2, "line": []}',
    b'{"v": 1, "line": "not a list"}',
    json.dumps({"v": 1, "line": [2], **{c: [] for c in CDR_COLUMNS}}).encode(),  # lengths differ
]


@pytest.mark.parametrize(
    "extra",
    [[], GARBAGE, [_with_wrong_type("cdr_id", 7)], [_with_wrong_type("line", 2.5)], [_with_wrong_type("caller", ["x"])]],
    ids=["chunks", "garbage", "int-in-text", "float-line", "list-in-text"],
)
def test_a_batch_decodes_as_its_messages_one_by_one(extra: list[bytes | None]) -> None:
    values = [_chunk(2, 3), *extra, _chunk(10, 1, source="g.csv", ingest_id="i2"), _chunk(20, 0), _chunk(30, 4)]
    batch = cdr_chunks_frame(values)
    frame, heights, errors = _one_by_one(values)
    assert batch.frame.equals(frame)
    assert batch.frame.schema == frame.schema
    assert batch.heights == heights
    assert sorted(batch.errors) == errors
    assert len(errors) == len(extra)


def test_a_batch_of_nothing_but_garbage_has_no_lines() -> None:
    batch = cdr_chunks_frame(GARBAGE)
    assert batch.frame.height == 0 and sorted(batch.errors) == list(range(len(GARBAGE)))
    assert batch.frame.columns == cdr_chunk_frame(json.loads(_chunk(2, 1))).columns


def test_output_messages_decoded_at_once_equal_read_output_one_by_one() -> None:
    from datetime import UTC, date, datetime

    from schemas.messages import frame_value, frames_from_values
    from streams.worker.sinks import OUTPUT_SCHEMAS, read_output

    schema = OUTPUT_SCHEMAS["alerts"]
    rows = {
        "account_id": ["A1", "A2"],
        "kind": ["low_balance", "arrears"],
        "cdr_id": ["c1", "c2"],
        "balance": [100, -5],
        "line": [2, 3],
        "local_day": [date(2026, 3, 1), date(2026, 3, 2)],
        "not_a_column": ["x", "y"],
    }
    frame = pl.DataFrame(rows)
    if "charge_time" in schema:
        frame = frame.with_columns(
            charge_time=pl.Series([datetime(2026, 3, 1, 1, tzinfo=UTC), datetime(2026, 3, 2, 2, tzinfo=UTC)])
        )
    good = json.dumps(frame_value(frame)).encode()
    other = json.dumps(frame_value(frame.drop("line").head(1))).encode()  # another column set
    wrong_type = json.dumps(frame_value(frame.with_columns(pl.col("balance").cast(pl.String) + "x"))).encode()
    values = [good, b"not json", other, wrong_type, good, None]
    decoded = frames_from_values(values, schema)
    assert len(decoded) == len(values)
    for value, result in zip(values, decoded):
        try:
            expected = read_output(value, "alerts")
        except Exception:
            assert isinstance(result, Exception)
            continue
        assert isinstance(result, pl.DataFrame) and result.equals(expected) and result.schema == expected.schema
    assert [isinstance(r, Exception) for r in decoded] == [False, True, False, True, False, True]


def test_an_arrow_output_message_reads_as_its_json_form() -> None:
    from datetime import date

    from schemas.messages import frame_bytes, frame_value, frames_from_values
    from streams.worker.sinks import OUTPUT_SCHEMAS

    schema = OUTPUT_SCHEMAS["alerts"]
    frame = pl.DataFrame(
        {
            "account_id": ["A1", None],
            "kind": ["low_balance", "arrears"],
            "cdr_id": ["c1", "c2"],
            "balance": [100, -(2**62)],  # money beyond a float's exact range stays exact
            "line": [2, 3],
            "local_day": [date(2026, 3, 1), date(2026, 3, 2)],
            "not_a_column": ["x", "y"],
        }
    )
    values = [
        frame_bytes(frame),
        json.dumps(frame_value(frame)).encode(),
        frame_bytes(frame.with_columns(pl.col("line").cast(pl.Int32))),  # a narrower type: cast
        frame_bytes(frame.with_columns(pl.col("balance").cast(pl.String) + "x")),  # no integer: refused
        frame_bytes(frame)[: len(frame_bytes(frame)) // 2],  # cut short
    ]
    arrow, text, narrow, wrong, short = frames_from_values(values, schema)
    assert isinstance(arrow, pl.DataFrame) and arrow.equals(text) and arrow.schema == text.schema
    assert "not_a_column" not in arrow.columns and arrow.get_column("balance").to_list() == [100, -(2**62)]
    assert isinstance(narrow, pl.DataFrame) and narrow.equals(arrow)
    assert isinstance(wrong, Exception) and isinstance(short, Exception)


def _with_optional(first_line: int, lines: int, **columns: list[object]) -> bytes:
    value = json.loads(_chunk(first_line, lines))
    value.update(columns)
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    "extra",
    [
        [_with_optional(50, 2, caller_origin=["local", None], read_at=[1772323200000, 1772323260000])],
        [_with_optional(50, 2, read_at=[1772323200000, "not epoch ms"])],  # this chunk's read_at: nulls
        [_with_optional(50, 2, caller_origin=["local", 3])],  # this chunk's caller_origin: nulls
        [_with_optional(50, 2, read_at=[1772323200000])],  # a length that is not the chunk's: nulls
        [_with_optional(50, 1, read_at=[1]), _with_optional(60, 2, caller_origin="not a list")],
    ],
    ids=["both", "read_at-wrong-type", "origin-wrong-type", "read_at-short", "mixed"],
)
def test_optional_columns_decode_at_once_as_one_by_one(extra: list[bytes]) -> None:
    """The optional columns (caller_origin, read_at) are built once over the batch; a chunk
    whose values are not of their type gets nulls, as it would decoded alone, the others keep theirs."""
    values = [_chunk(2, 3), *extra, _with_optional(10, 1, caller_origin=["national"], read_at=[1772409600000])]
    batch = cdr_chunks_frame(values)
    frame, heights, errors = _one_by_one(values)
    assert batch.frame.equals(frame)
    assert batch.frame.schema == frame.schema
    assert batch.heights == heights and errors == []
    assert batch.frame.get_column("read_at").is_not_null().sum() >= 1


def test_chunk_values_made_at_once_equal_those_made_one_by_one() -> None:
    """Ingest and the live feeds make a piece's messages at once (cdr_chunk_values): each
    must be the message cdr_chunk_value makes of its chunk alone, read_at and caller_origin
    included, also for chunks whose columns differ."""
    from datetime import UTC, datetime

    from schemas.messages import cdr_chunk_values

    frame = pl.DataFrame(
        {
            "line": [2, 3, 4, 5, 6],
            **{c: [f"{c}-{n}" for n in range(5)] for c in CDR_COLUMNS},
            "caller_origin": ["local", None, "national", "local", None],
            "read_at": pl.Series([datetime(2026, 3, 1, 0, 0, n, 5000, tzinfo=UTC) for n in range(5)]).cast(
                pl.Datetime("ms", "UTC")
            ),
        }
    )
    chunks = [frame.slice(0, 2), frame.slice(2, 0), frame.slice(2, 3)]
    values = cdr_chunk_values("f.csv", chunks, "i9")
    assert values == [cdr_chunk_value("f.csv", chunk, "i9") for chunk in chunks]
    assert values[0]["read_at"] == [1772323200005, 1772323201005] and values[2]["line"] == [4, 5, 6]
    mixed = [frame.slice(0, 2), frame.slice(2, 3).drop("read_at")]
    assert cdr_chunk_values("f.csv", mixed) == [cdr_chunk_value("f.csv", chunk) for chunk in mixed]
    assert cdr_chunk_values("f.csv", []) == []
