"""What a profile can say (issue 21 item 9): epoch times, HH:MM:SS durations, derived
times, constants, comments and blank lines, trimmed fields, fixed width, encodings."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.switch_formats import Feed, ProfileError, load_profile


def _feed(tmp_path: Path, text: str) -> Feed:
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    return Feed.of("mapped", profile=path)


EPOCH = """
name = "epoch"
header = false
quoted = false
delimiter = "|"
columns_per_line = 6
time_format = "epoch_ms"
comment = "#"
skip_blank = true
[columns]
cdr_id = 1
caller = 2
called = 3
answer_number = { value = "01088886666" }
start_time = 4
end_time = 5
billsec = 6
disposition = { value = "" }
[derive]
answer_time = "end_time - billsec"
[disposition]
otherwise = "NO ANSWER"
[[disposition.rules]]
billsec = "positive"
to = "ANSWERED"
"""


def test_epoch_milliseconds_derived_answer_constants_and_skipped_lines(tmp_path: Path) -> None:
    feed = _feed(tmp_path, EPOCH)
    data = (
        b"# exported 2026-03-02\n"
        b"v1|13800138000|4008001234|1772413200500|1772413330500|125\n"
        b"\n"
        b"v2|13800138000|4008001234|1772413200000|1772413230000|0\n"
    )
    rows = feed.layout(None).parse(data, 1).to_dicts()
    assert [r["framing"] for r in rows] == ["not a record", None, "not a record", None]
    first, second = rows[1], rows[3]
    assert (first["start_time"], first["answer_time"], first["end_time"]) == (
        "2026-03-02T01:00:00.500000+00:00", "2026-03-02T01:00:05.500000+00:00", "2026-03-02T01:02:10.500000+00:00",
    )  # fmt: skip
    assert (first["disposition"], first["answer_area"], first["line"]) == ("ANSWERED", "010", 2)
    assert (second["answer_time"], second["disposition"]) == ("", "NO ANSWER")


def test_hms_durations_trimmed_fields_and_gbk(tmp_path: Path) -> None:
    feed = _feed(tmp_path, """
name = "hms"
header = true
trim = true
encoding = "gbk"
duration_format = "hms"
[columns]
cdr_id = "编号"
caller = "主叫"
called = "被叫"
answer_number = "接听"
start_time = "开始"
answer_time = "接通"
end_time = "结束"
billsec = "时长"
disposition = { value = "ANSWERED" }
""")
    text = (
        "编号,主叫,被叫,接听,开始,接通,结束,时长\r\n"
        'a1, "13800138000" , 4008001234 , 01088886666, 2026-03-02 09:00:00, 2026-03-02 09:00:05, 2026-03-02 09:02:10, 00:02:05\r\n'
        "a2, 13800138000, 4008001234, 01088886666, 2026-03-02 09:00:00, 2026-03-02 09:00:05, 2026-03-02 09:02:10, 000205\r\n"
    )
    header, body = text.encode("gbk").split(b"\r\n", 1)
    rows = feed.layout(header + b"\r\n").parse(body, 2).to_dicts()
    assert [(r["cdr_id"], r["caller"], r["billsec"], r["framing"]) for r in rows] == [
        ("a1", "13800138000", "125", None), ("a2", "13800138000", "125", None),
    ]  # fmt: skip


def test_a_fraction_of_a_second_is_read_and_billsec_rounded_half_up(tmp_path: Path) -> None:
    feed = Feed.of("asterisk")
    line = (
        '"","13800138000","4008001234","from-trunk","","SIP/a-1","SIP/b-2","Dial","SIP/gw/01088886666,60",'
        '"2026-03-02 01:00:00.250","2026-03-02 01:00:05.250","2026-03-02 01:02:10.750",130.5,125.5,"ANSWERED",'
        '"DOCUMENTATION","1772413200.1",""\n'
    )
    (row,) = feed.layout(None).parse(line.encode(), 1).to_dicts()
    assert (row["answer_time"], row["billsec"], row["framing"]) == ("2026-03-02T01:00:05.250000+00:00", "126", None)


def test_a_derivation_needs_times_it_can_work_on(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(EPOCH, encoding="utf-8")
    assert load_profile(path).derive == {"answer_time": "end_time - billsec"}
    path.write_text(EPOCH.replace('time_format = "epoch_ms"', 'time_format = "iso8601"'), encoding="utf-8")
    with pytest.raises(ProfileError, match="derive: times in iso8601 are taken as written"):
        load_profile(path)


def test_a_bad_derivation_or_slice_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(EPOCH.replace('answer_time = "end_time - billsec"', 'answer_time = "end_time - 5"'), encoding="utf-8")
    with pytest.raises(ProfileError, match="key derive: answer_time can be derived as"):
        load_profile(path)
    path.write_text(EPOCH.replace("cdr_id = 1", "cdr_id = { slice = [0, 10] }"), encoding="utf-8")
    with pytest.raises(ProfileError, match="slices are for layout = 'fixed'"):
        load_profile(path)
    path.write_text(EPOCH.replace('name = "epoch"', 'name = "epoch"\nencoding = "latin-9"'), encoding="utf-8")
    with pytest.raises(ProfileError, match="key encoding: encoding 'latin-9' is not one cdrflow reads"):
        load_profile(path)


def test_a_gbk_file_read_as_utf8_is_rejected_line_by_line_and_warned_about(tmp_path: Path) -> None:
    from rating import Catalog
    from schemas.columns import CDR_HEADER
    from streams.offline.rate import rate_file
    from tariffs import load_tariffs
    from tests.conftest import VECTORS

    basic = VECTORS / "basic"
    line = ("G1,北京交换机,13800138000,4008001234,01088886666,010,010,2026-03-02T09:00:00+08:00,"
            "2026-03-02T09:00:05+08:00,2026-03-02T09:02:10+08:00,125,ANSWERED")  # fmt: skip
    cdrs = tmp_path / "cdrs.csv"
    cdrs.write_bytes((CDR_HEADER + "\n" + line + "\n").encode("gbk"))
    catalog = Catalog.from_tariffs(load_tariffs(basic / "plans", basic / "accounts.toml"))
    as_utf8 = rate_file(cdrs, catalog, tmp_path / "a")
    assert as_utf8.rejected == {"malformed": 1}
    assert as_utf8.warnings == [
        "1 of 1 lines are not UTF-8: is the file GBK (what Excel on Chinese Windows saves)? Read it with --encoding gbk"
    ]
    as_gbk = rate_file(cdrs, catalog, tmp_path / "g", feed=Feed.of("canonical", encoding="gbk"))
    assert (as_gbk.rated, as_gbk.warnings) == (1, [])
