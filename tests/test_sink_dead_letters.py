"""The sink never retries forever the rows ClickHouse refuses (issue 21 item 11): they go to
``dead_letters`` (migration 0019), the rows after them land, and ``cdrflow status`` says so."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import polars as pl
import pytest
from clickhouse_driver import errors as clickhouse_errors

from schemas.messages import ARROW_STREAM_MARK, frame_bytes, frame_value
from streams.clickhouse import tables
from streams.clickhouse.insert import ClickHouseUnavailable, table_columns
from streams.worker import sinks


@dataclass
class _Message:
    topic: str
    partition: int
    offset: int
    value: bytes


@dataclass
class _Event:
    message: _Message


def _json(frame: pl.DataFrame) -> bytes:
    return orjson.dumps(frame_value(frame))


def _alert(cdr_id: str, day: str = "2026-03-02", encode: Callable[[pl.DataFrame], bytes] = _json) -> bytes:
    frame = pl.DataFrame(
        {"account_id": ["A001"], "kind": ["low_balance"], "cdr_id": [cdr_id], "balance": [100], "line": [2],
         "local_day": [datetime.fromisoformat(day).date()]},
    )  # fmt: skip
    return encode(frame)


class _ClickHouse:
    """An insert that refuses rows holding a cdr_id starting with "bad", as a table
    refuses a value it cannot hold; and keeps what it took."""

    def __init__(self, away: int = 0):
        self.taken: dict[str, list[pl.DataFrame]] = {}
        self.away = away

    def insert(self, client: object, frame: pl.DataFrame, **_: object) -> int:
        if self.away:
            self.away -= 1
            raise ClickHouseUnavailable("ClickHouse did not answer")
        if (frame.get_column("cdr_id").str.starts_with("bad")).any():
            raise ValueError("alerts: a column does not have the expected type")
        self.taken.setdefault("alerts", []).append(frame)
        return frame.height


@pytest.mark.parametrize("encode", [_json, frame_bytes], ids=["json", "arrow"])
def test_a_refused_message_goes_to_dead_letters_and_the_others_land(
    monkeypatch: pytest.MonkeyPatch, encode: Callable[[pl.DataFrame], bytes]
) -> None:
    clickhouse = _ClickHouse()
    letters: list[pl.DataFrame] = []
    monkeypatch.setattr(sinks.inserts, "insert", lambda client, table, frame, **_: letters.append(frame) or frame.height)
    events = [_Event(_Message("alerts", 0, n, _alert(cdr, encode=encode))) for n, cdr in enumerate(["c1", "bad2", "c3"])]
    events.append(_Event(_Message("alerts", 0, 3, b"not json")))
    # Bytes that start as an Arrow stream does and are none: no crash, a dead letter.
    events.append(_Event(_Message("alerts", 0, 4, ARROW_STREAM_MARK + b"\x10\x00\x00\x00garbage")))
    landings = sinks._landings(events, "alerts")
    dead = sinks._insert_until_done(object(), clickhouse.insert, landings, "alerts", threading.Event())
    assert dead == 3
    assert [f.get_column("cdr_id").to_list() for f in clickhouse.taken["alerts"]] == [["c1"], ["c3"]]
    letter = pl.concat(letters)
    assert letter.select("offset", "kind", "rows").rows() == [(3, "alerts", 0), (4, "alerts", 0), (1, "alerts", 1)]
    assert "expected type" in letter.get_column("reason")[2]
    # The refused message is kept readable, whatever its encoding: an Arrow one as its rows' JSON.
    kept = orjson.loads(letter.get_column("message")[2])
    assert kept["rows"]["cdr_id"] == ["bad2"] and kept["rows"]["local_day"] == ["2026-03-02"]
    # the row the sink writes is one dead_letters takes
    names, _ = table_columns(tables.DEAD_LETTERS, letter)
    assert names[:4] == ["kind", "topic", "partition", "offset"]


def test_clickhouse_away_is_waited_for_not_dead_lettered(monkeypatch: pytest.MonkeyPatch) -> None:
    clickhouse = _ClickHouse(away=2)
    stopping = threading.Event()
    monkeypatch.setattr(stopping, "wait", lambda delay: False)  # no real sleeping
    landings = sinks._landings([_Event(_Message("alerts", 0, 0, _alert("c1")))], "alerts")
    assert sinks._insert_until_done(object(), clickhouse.insert, landings, "alerts", stopping) == 0
    assert clickhouse.away == 0 and len(clickhouse.taken["alerts"]) == 1


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (ValueError("bad column"), True),
        (pl.exceptions.InvalidOperationError("conversion from i64 to u32 failed (a year 2107)"), True),
        (clickhouse_errors.ServerException("Type mismatch", code=53), True),
        (clickhouse_errors.ServerException("Table doesn't exist", code=60), False),
        (ClickHouseUnavailable("away"), False),
        (ConnectionError("refused"), False),
    ],
)
def test_what_counts_as_refused(error: BaseException, refused: bool) -> None:
    assert sinks.refused(error) is refused


def test_a_charge_time_clickhouse_cannot_store_is_refused_not_retried() -> None:
    # DateTime ends in 2106: the sink's own conversion refuses 2107 (rating.bounds keeps
    # such a call from being rated at all; this is the sink's own guard).
    frame = pl.DataFrame({"charge_time": [datetime(2107, 1, 1, tzinfo=UTC)]})
    with pytest.raises(pl.exceptions.PolarsError) as raised:
        frame.select(pl.col("charge_time").dt.epoch("s").cast(pl.UInt32, strict=True))
    assert sinks.refused(raised.value)


def test_bytes_that_make_polars_panic_are_a_dead_letter_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    # polars' PanicException is a BaseException: a reader that let it through would stop the sink.
    def panics(_source: object) -> pl.DataFrame:
        raise pl.exceptions.PanicException("index out of bounds")

    monkeypatch.setattr(pl, "read_ipc_stream", panics)
    value = ARROW_STREAM_MARK + b"\x10\x00\x00\x00garbage"
    (landing,) = sinks._landings([_Event(_Message("alerts", 0, 7, value))], "alerts")
    assert landing.frame is None and "not an Arrow IPC stream" in landing.problem
    assert sinks._readable(landing) == value.decode("utf-8", errors="replace")
