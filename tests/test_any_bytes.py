"""No line can crash a run (issue 21 item 1): arbitrary bytes per line, every format.

Whatever a line holds, it ends in exactly one output (a rated or unbilled row, or a
rejection), and nothing raises: on the offline path (``rate_file``, what ``cdrflow rate``
runs) and on the streaming path's pure parts (a feed's framing and routing,
``streams.feeds.routing``, then the worker's batch step, ``streams.worker.batch.rate_messages``),
without servers.
"""

from __future__ import annotations

import json
from pathlib import Path
from tempfile import TemporaryDirectory

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rating import Catalog
from schemas.columns import CDR_HEADER
from schemas.messages import cdr_chunk_value
from schemas.switch_formats import PROFILES_DIR, Feed, Layout
from streams.feeds.routing import AccountChunker, route
from streams.offline.rate import rate_file
from streams.worker.batch import rate_messages
from streams.worker.messages import SourceMessage
from streams.worker.sinks import read_output
from tariffs import load_tariffs
from tests.conftest import VECTORS

BASIC = VECTORS / "basic"
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

#: A sound line of each format (a call to account A001), which the strategy breaks.
GOOD_LINES: dict[str, bytes] = {
    "canonical": b"G1,sw1,13800138000,4008001234,01088886666,010,010,2026-03-02T09:00:00+08:00,"
    b"2026-03-02T09:00:05+08:00,2026-03-02T09:02:10+08:00,125,ANSWERED",
    "asterisk": b'"","13800138000","4008001234","from-trunk","""Zhang, San"" <13800138000>","SIP/ct-1","SIP/out-2",'
    b'"Dial","SIP/out/01088886666,60","2026-03-02 01:00:00","2026-03-02 01:00:05","2026-03-02 01:02:10",130,125,'
    b'"ANSWERED","DOCUMENTATION","1772413200.1",""',
    "freeswitch": b'"Smith, John","13800138000","4008001234","public","2026-03-02 09:00:00","2026-03-02 09:00:05",'
    b'"2026-03-02 09:02:10","130","125","NORMAL_CLEARING","8b1c","","","PCMA","PCMA"',
}
PIECES = [b'"', b",", b'","', b"", b" ", b"\r", b"\xa5\xa5", b"\xff", b"\x00", b"\xe5\xbc\xa0", b"\xef\xbf\xbd",
          b"4008001234", b"2026-03-02 09:00:00", b"9999-12-31 23:59:59", b"ANSWERED", b"60", b"-1", b"1250",
          b"anonymous", b"+86", b"|", b"#", b"x" * 5000]  # fmt: skip


@st.composite
def lines(draw: st.DrawFn, fmt: str) -> bytes:
    """A line: random bytes, random pieces, or a sound line with pieces put in or cut out."""
    kind = draw(st.sampled_from(["bytes", "pieces", "broken", "broken", "sound"]))
    if kind == "bytes":
        line = draw(st.binary(max_size=120))
    elif kind == "pieces":
        line = b"".join(draw(st.lists(st.sampled_from(PIECES), max_size=30)))
    else:
        line = GOOD_LINES[fmt]
        if kind == "broken":
            for _ in range(draw(st.integers(1, 3))):
                at = draw(st.integers(0, len(line)))
                cut = draw(st.integers(0, 6))
                line = line[:at] + draw(st.sampled_from(PIECES)) + line[at + cut :]
    return line.replace(b"\n", b"")


def _feed(fmt: str, folder: Path) -> Feed:
    if fmt == "canonical":
        return Feed.canonical()
    if fmt == "asterisk":
        return Feed.of("asterisk")
    profile = folder / "fs.toml"
    text = (PROFILES_DIR / "freeswitch-example.toml").read_text(encoding="utf-8")
    profile.write_text(text.replace('# default_area = "010"', 'default_area = "010"'), encoding="utf-8")
    return Feed.of("mapped", profile=profile)


def _file(fmt: str, body: list[bytes]) -> bytes:
    data = b"".join(line + b"\n" for line in body)
    return (CDR_HEADER.encode() + b"\n" + data) if fmt == "canonical" else data


def _catalog() -> tuple[Catalog, dict[str, str]]:
    tariffs = load_tariffs(BASIC / "plans", BASIC / "accounts.toml")
    return Catalog.from_tariffs(tariffs), tariffs.account_of_number()


def _check_each_line_once(fmt: str, body: list[bytes], lines_out: list[int]) -> None:
    first = 2 if fmt == "canonical" else 1
    assert sorted(lines_out) == list(range(first, first + len(body))), (body, sorted(lines_out))


@st.composite
def logs(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    fmt = draw(st.sampled_from(sorted(GOOD_LINES)))
    return fmt, draw(st.lists(lines(fmt), max_size=25))


@SETTINGS
@given(log=logs())
def test_every_line_ends_in_one_output_offline(log: tuple[str, list[bytes]]) -> None:
    fmt, body = log
    catalog, _ = _catalog()
    with TemporaryDirectory() as folder:
        path = Path(folder) / "cdrs.csv"
        path.write_bytes(_file(fmt, body))
        summary = rate_file(path, catalog, Path(folder) / "out", feed=_feed(fmt, Path(folder)))
        rated = pl.read_csv(Path(folder) / "out" / "rated.csv", infer_schema=False)
        rejected = pl.read_csv(Path(folder) / "out" / "rejected.csv", infer_schema=False)
    assert summary.cdrs == len(body) == rated.height + rejected.height
    _check_each_line_once(fmt, body, [int(n) for n in [*rated["line"], *rejected["line"]]])


@SETTINGS
@given(log=logs(), chunk=st.integers(1, 4))
def test_every_line_ends_in_one_output_on_the_streaming_path(log: tuple[str, list[bytes]], chunk: int) -> None:
    fmt, body = log
    catalog, owners = _catalog()
    with TemporaryDirectory() as folder:
        feed = _feed(fmt, Path(folder))
    data = _file(fmt, body)
    header = data.split(b"\n", 1)[0] + b"\n" if feed.has_header else None
    layout: Layout = feed.layout(header)
    batch = layout.parse(data[len(header or b"") :], layout.first_line)
    assert batch.height == len(body)  # one row per physical line: the framing's contract
    routed = route(batch, owners, source="Master.csv", ingest_id="i1")
    chunker = AccountChunker(limit=chunk)
    messages = []
    for offset, (account, lines_) in enumerate([*chunker.add(routed.accepted), *chunker.flush()]):
        value = json.dumps(cdr_chunk_value("Master.csv", lines_, "i1")).encode()
        messages.append(SourceMessage(account.encode(), 0, offset, value))
    outcome = rate_messages(messages, {}, catalog, "cdr.raw")
    worker_lines = [
        line
        for message in outcome.outputs
        if message.kind in ("rated", "rejected")
        for line in read_output(message.value, message.kind).get_column("line").to_list()
    ]
    _check_each_line_once(fmt, body, [*routed.rejected.get_column("line").to_list(), *worker_lines])
