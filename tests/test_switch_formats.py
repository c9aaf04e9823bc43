"""Real switch feeds (issue 7): Asterisk Master.csv, mapped profiles, areas from numbers.

The same generated traffic is rated as the canonical file and as what a switch writes;
the results must be the same, but for the line numbers (Master.csv has no header).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from rating import Catalog
from schemas.cdr_csv import HeaderError
from schemas.columns import CDR_HEADER, DISPOSITIONS
from schemas.switch_formats import (
    ASTERISK_COLUMNS,
    PROFILES_DIR,
    Feed,
    ProfileError,
    asterisk_profile,
    load_profile,
)
from streams.offline.compare import compare_outputs
from streams.offline.generate import GeneratedDataset, generate_dataset
from streams.offline.rate import rate_file
from tariffs import load_tariffs
from tests.conftest import VECTORS, run_cdrflow

FREESWITCH = PROFILES_DIR / "freeswitch-answering.toml"
CANONICAL = PROFILES_DIR / "canonical.toml"
#: FreeSWITCH mod_cdr_csv's documented default template ("example", cdr_csv.conf.xml)
#: plus the B-leg dial string, as the example profile describes it.
FREESWITCH_TEMPLATE = (
    '"${caller_id_name}","${caller_id_number}","${destination_number}","${context}","${start_stamp}",'
    '"${answer_stamp}","${end_stamp}","${duration}","${billsec}","${hangup_cause}","${uuid}","${bleg_uuid}",'
    '"${accountcode}","${read_codec}","${write_codec}","${last_arg}"'
)
_HANGUP_CAUSE = {"NO ANSWER": "ORIGINATOR_CANCEL", "BUSY": "USER_BUSY", "FAILED": "CALL_REJECTED",
                 "CONGESTION": "NORMAL_CIRCUIT_CONGESTION"}  # fmt: skip


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> tuple[GeneratedDataset, GeneratedDataset]:
    """The same month of traffic written canonical and as Asterisk's Master.csv."""
    root = tmp_path_factory.mktemp("traffic")
    options = {"cdrs": 20_000, "accounts": 300, "month": "2026-03", "seed": 23}
    return generate_dataset(root / "canonical", **options), generate_dataset(
        root / "asterisk", **options, cdr_format="asterisk"
    )


def _catalog(data: GeneratedDataset) -> Catalog:
    return Catalog.from_tariffs(load_tariffs(data.plans_dir, data.accounts_file))


def _outputs(out: Path) -> dict[str, pl.DataFrame]:
    return {
        name: pl.read_csv(out / f"{name}.csv", infer_schema=False).with_columns(pl.col("line").cast(pl.Int64))
        for name in ("rated", "rejected", "alerts")
    }


def _shifted(frames: dict[str, pl.DataFrame], by: int) -> dict[str, pl.DataFrame]:
    return {name: frame.with_columns(pl.col("line") + by) for name, frame in frames.items()}


def test_generated_files_hold_the_same_calls(traffic: tuple[GeneratedDataset, GeneratedDataset]) -> None:
    canonical, asterisk = traffic
    assert canonical.cdrs_file.name == "cdrs.csv" and asterisk.cdrs_file.name == "Master.csv"
    assert canonical.accounts_file.read_bytes() == asterisk.accounts_file.read_bytes()
    lines = asterisk.cdrs_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == canonical.cdrs == len(canonical.cdrs_file.read_text(encoding="utf-8").splitlines()) - 1
    # As cdr_csv.c writes them: text quoted, duration and billsec bare, an unanswered
    # call's answer time empty and bare; times in UTC (usegmtime=yes).
    first = next(csv.reader([lines[0]]))
    assert len(first) == len(ASTERISK_COLUMNS) and lines[0].startswith('"')
    assert re.search(r',"(ANSWERED|NO ANSWER)",', lines[0]) and re.search(r',\d+,\d+,"', lines[0])
    assert any(re.search(r'\d",,"\d', line) for line in lines[:200])


def test_asterisk_master_csv_rates_exactly_like_the_canonical_file(
    traffic: tuple[GeneratedDataset, GeneratedDataset], tmp_path: Path
) -> None:
    canonical, asterisk = traffic
    rate_file(canonical.cdrs_file, _catalog(canonical), tmp_path / "canonical")
    summary = rate_file(asterisk.cdrs_file, _catalog(asterisk), tmp_path / "asterisk", feed=Feed.of("asterisk"))
    expected = _shifted(_outputs(tmp_path / "canonical"), -1)  # no header line in Master.csv
    actual = _outputs(tmp_path / "asterisk")
    assert summary.rated > 10_000 and sum(summary.rejected.values()) > 0 and sum(summary.alerts.values()) > 0
    assert actual["rated"].equals(expected["rated"])
    assert actual["alerts"].equals(expected["alerts"])
    keys = ["line", "cdr_id", "reason", "account_id"]
    assert actual["rejected"].select(keys).equals(expected["rejected"].select(keys))
    assert set(actual["rejected"].get_column("reason")) == {"malformed", "duplicate", "unknown_number", "no_rate"}
    # The words differ only where a line is broken in each format's own way: a time not
    # in the format's form, a column short (of 12) or too many (of Asterisk's layouts).
    differ = actual["rejected"].filter(pl.col("detail") != expected["rejected"].get_column("detail"))
    assert differ.height > 0
    assert differ.get_column("detail").str.contains(
        r"^start_time '|^wrong number of columns: 19 \(expected 16, 17, 18, 19, 20 or 21\)$|^wrong number of columns: 22"
    ).all()
    # And `cdrflow compare` agrees, given the shifted expectation.
    want = tmp_path / "want"
    want.mkdir()
    for name, frame in expected.items():
        frame.write_csv(want / f"{name}.csv")
    compared = compare_outputs(want, tmp_path / "asterisk")
    assert compared.ok, compared.report()


def test_the_canonical_profile_rates_exactly_like_the_canonical_format(vector_set: Path, tmp_path: Path) -> None:
    catalog = Catalog.from_tariffs(load_tariffs(vector_set / "plans", vector_set / "accounts.toml"))
    rate_file(vector_set / "cdrs.csv", catalog, tmp_path / "canonical")
    rate_file(vector_set / "cdrs.csv", catalog, tmp_path / "mapped", feed=Feed.of("mapped", profile=CANONICAL))
    for name in ("rated", "rejected", "alerts"):
        assert (tmp_path / "mapped" / f"{name}.csv").read_bytes() == (tmp_path / "canonical" / f"{name}.csv").read_bytes()
    assert compare_outputs(vector_set / "expected", tmp_path / "mapped").ok


def _freeswitch_line(row: dict[str, str]) -> str:
    """One call written through FreeSWITCH's template, as mod_cdr_csv renders it."""
    local = {name: row[name][:19].replace("T", " ") for name in ("start_time", "answer_time", "end_time")}
    disposition = row["disposition"]
    cause = "NORMAL_CLEARING" if disposition == "ANSWERED" else _HANGUP_CAUSE[disposition]
    variables = {
        "caller_id_name": row["caller"],
        "caller_id_number": row["caller"],
        "destination_number": row["called"],
        "context": "public",
        "start_stamp": local["start_time"],
        "answer_stamp": local["answer_time"],
        "end_stamp": local["end_time"],
        "duration": "0",
        "billsec": row["billsec"],
        "hangup_cause": cause,
        "uuid": row["cdr_id"],
        "bleg_uuid": "",
        "accountcode": row["switch_id"],
        "read_codec": "PCMA",
        "write_codec": "PCMA",
        "last_arg": f"sofia/gateway/ct-out/{row['answer_number']}",
    }
    line = FREESWITCH_TEMPLATE
    for name, value in variables.items():
        line = line.replace("${" + name + "}", value.replace('"', '""'))
    assert "${" not in line
    return line


def test_the_freeswitch_profile_rates_a_sample_written_from_its_template(
    traffic: tuple[GeneratedDataset, GeneratedDataset], tmp_path: Path
) -> None:
    canonical, _ = traffic
    rows = (
        pl.read_csv(canonical.cdrs_file, infer_schema=False, truncate_ragged_lines=True)
        .head(3000)
        .with_columns(pl.all().fill_null(""))
    )
    # The well-formed calls: FreeSWITCH writes its own times, so a broken one cannot be rendered.
    sample = rows.filter(
        pl.col("start_time").str.contains(r"\+08:00$") & pl.col("billsec").str.contains(r"^\d+$")
        & (pl.col("answer_number") != "") & pl.col("disposition").is_in(DISPOSITIONS)
    )
    assert sample.height > 2900
    (tmp_path / "canonical.csv").write_text(
        CDR_HEADER + "\n" + "\n".join(",".join(r) for r in sample.rows()) + "\n", encoding="utf-8"
    )
    (tmp_path / "Master.csv").write_text(
        "\n".join(_freeswitch_line(r) for r in sample.iter_rows(named=True)) + "\n", encoding="utf-8"
    )
    catalog = _catalog(canonical)
    rate_file(tmp_path / "canonical.csv", catalog, tmp_path / "want")
    summary = rate_file(
        tmp_path / "Master.csv", catalog, tmp_path / "got", feed=Feed.of("mapped", profile=FREESWITCH)
    )
    want, got = _shifted(_outputs(tmp_path / "want"), -1), _outputs(tmp_path / "got")
    assert summary.rated > 2000
    assert got["rated"].equals(want["rated"])
    assert got["alerts"].equals(want["alerts"])
    assert got["rejected"].equals(want["rejected"])
    # the hangup causes became the canonical dispositions: unanswered calls are unbilled
    assert got["rated"].filter(pl.col("status") == "unbilled").height == want["rated"].filter(
        pl.col("status") == "unbilled"
    ).height > 100


# ------------------------------------------------------------------ framing, line by line


def _asterisk(**fields: str) -> str:
    values = {
        "accountcode": "", "src": "13800138000", "dst": "4008001234", "dcontext": "from-trunk",
        "clid": '"Zhang, San" <13800138000>', "channel": "SIP/ct-00000001", "dstchannel": "SIP/out-00000002",
        "lastapp": "Dial", "lastdata": "SIP/out/01088886666,60", "start": "2026-03-02 09:00:00",
        "answer": "2026-03-02 09:00:05", "end": "2026-03-02 09:01:05", "duration": "65", "billsec": "60",
        "disposition": "ANSWERED", "amaflags": "DOCUMENTATION", "uniqueid": "1772413200.1",
        "userfield": "01088886666",
    }  # fmt: skip
    values.update(fields)
    return ",".join('"' + values[name].replace('"', '""') + '"' for name in ASTERISK_COLUMNS)


def _frame(text: str, feed: Feed | None = None) -> pl.DataFrame:
    feed = feed or Feed.of("asterisk")
    return feed.layout(None).parse(text.encode(), 1)


def test_asterisk_fields_become_canonical_with_physical_line_numbers() -> None:
    frame = _frame(_asterisk() + "\n" + _asterisk(uniqueid="1772413200.2", answer="", billsec="0",
                                                  disposition="NO ANSWER", userfield="", lastdata="") + "\n")
    first, second = frame.to_dicts()
    assert first == {
        "line": 1, "cdr_id": "1772413200.1", "switch_id": "", "caller": "13800138000", "called": "4008001234",
        "answer_number": "01088886666", "caller_area": "010", "answer_area": "010",
        "start_time": "2026-03-02T09:00:00+00:00", "answer_time": "2026-03-02T09:00:05+00:00",
        "end_time": "2026-03-02T09:01:05+00:00", "billsec": "60", "disposition": "ANSWERED",
        "caller_origin": "area", "framing": None,
    }  # fmt: skip
    # an unanswered call with no forwarding number is read, with no answer area
    assert (second["line"], second["answer_time"], second["answer_area"], second["framing"]) == (2, "", "", None)


def test_the_switch_timezone_and_switch_id_apply() -> None:
    feed = Feed.of("asterisk", switch_timezone="Europe/London", switch_id="ast-ldn")
    winter, summer = _frame(_asterisk() + "\n" + _asterisk(start="2026-07-01 09:00:00", answer="2026-07-01 09:00:05",
                                                           end="2026-07-01 09:01:05") + "\n", feed).to_dicts()
    assert winter["start_time"] == "2026-03-02T09:00:00+00:00" and winter["switch_id"] == "ast-ldn"
    assert summer["end_time"] == "2026-07-01T09:01:05+01:00"
    gap = _frame(_asterisk(start="2026-03-29 01:30:00") + "\n", feed).row(0, named=True)
    assert gap["framing"] == "start_time '2026-03-29 01:30:00' does not exist in Europe/London (a daylight-saving gap)"


@pytest.mark.parametrize(
    ("line", "framing"),
    [
        (_asterisk(userfield="", lastdata="1001,20"), "answer_number is empty: no answering number is recorded"),
        (_asterisk(userfield="4008009999", lastdata=""), "answer_number '4008009999' is not a telephone number with an area"),
        (_asterisk(start="02/03/2026 09:00"), "start_time '02/03/2026 09:00' is not a time in the form %Y-%m-%d"),
        (_asterisk(end=""), "end_time is empty"),
        (",".join(_asterisk().split(",")[:15]), "wrong number of columns: 13 (expected 16, 17, 18, 19, 20 or 21)"),
        (_asterisk() + ',"x","y","z","w"', "wrong number of columns: 22 (expected 16, 17, 18, 19, 20 or 21)"),
        (_asterisk().replace('"SIP/ct-00000001"', '"SIP/ct-00000001'), "unbalanced quotes"),
        (_asterisk()[:-1], "unbalanced quotes"),
    ],
)
def test_a_broken_asterisk_line_says_why_and_the_next_is_read(line: str, framing: str) -> None:
    frame = _frame(line + "\n" + _asterisk(uniqueid="next") + "\n")
    broken, after = frame.to_dicts()
    assert broken["line"] == 1 and broken["framing"] is not None and broken["framing"].startswith(framing)
    assert (after["line"], after["cdr_id"], after["framing"]) == (2, "next", None)


def test_a_broken_line_is_rejected_malformed_with_its_reason(tmp_path: Path) -> None:
    vectors = VECTORS / "basic"
    good = _asterisk(dst="4008001234", uniqueid="u-ok")
    (tmp_path / "Master.csv").write_text(
        "\n".join([good, _asterisk(userfield="95588", lastdata="", uniqueid="u-short"), _asterisk(uniqueid="u-cols")[:-25]]) + "\n",
        encoding="utf-8",
    )
    run = run_cdrflow(
        "rate", tmp_path / "Master.csv", "--plans", vectors / "plans", "--accounts", vectors / "accounts.toml",
        "--out", tmp_path / "out", "--format", "asterisk", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout)
    assert figures["format"] == "asterisk (times in UTC)"
    assert figures["rejected"]["malformed"] == 2 and figures["cdrs"] == 3
    rejected = pl.read_csv(tmp_path / "out" / "rejected.csv", infer_schema=False).to_dicts()
    assert [(r["line"], r["cdr_id"], r["reason"]) for r in rejected] == [
        ("2", "u-short", "malformed"),
        ("3", "", "malformed"),
    ]
    assert "answer_number '95588' is not a number with an area code" in rejected[0]["detail"]
    assert rejected[1]["detail"] == "unbalanced quotes"


# ------------------------------------------------------------------------- profiles


def _profile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "switch.toml"
    path.write_text(text, encoding="utf-8")
    return path


_GOOD = FREESWITCH.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (_GOOD.replace("cdr_id = 11", "cdr_id = 0"), "key columns.cdr_id.column: a column is a name or a position from 1, got 0"),
        (_GOOD.replace("cdr_id = 11          # ${uuid}\n", ""), "columns: missing cdr_id"),
        (_GOOD.replace("caller = 2 ", "caller = 99 "), "columns.caller: column 99 > columns_per_line 16"),
        (_GOOD.replace("caller = 2 ", 'caller = "caller_id_number" '), "columns.caller: without a header"),
        (_GOOD.replace("'(\\+?\\d+)$'", "'(unclosed'"), "key columns.answer_number.regex: not a valid regular expression"),
        (_GOOD.replace('to = "BUSY"', 'to = "ENGAGED"'), "key disposition.rules.2.to"),
        (_GOOD.replace('otherwise = "FAILED"', 'otherwise = "FAILED"\nunknown = 1'), "key disposition.unknown: unknown key"),
        (_GOOD.replace("columns_per_line = 16\n", ""), "columns_per_line is required when header = false"),
        (_GOOD.replace('name = "freeswitch-answering"', 'name = "fs"\ntimezone = "Mars/Olympus"'), "key timezone: 'Mars/Olympus' is not an IANA timezone name"),
        (_GOOD.replace('time_format = "%Y-%m-%d %H:%M:%S"', 'time_format = "%H:%M"'), "key time_format: must be"),
        (_GOOD.replace('name = "freeswitch-answering"\n', ""), "key name: required key missing"),
        (_GOOD.replace("[columns]", "[columns"), "not valid TOML"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_file_and_key(text: str, words: str, tmp_path: Path) -> None:
    path = _profile(tmp_path, text)
    with pytest.raises(ProfileError) as refused:
        load_profile(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert words in str(refused.value)


def test_cli_refuses_a_bad_profile_without_a_traceback(tmp_path: Path) -> None:
    path = _profile(tmp_path, _GOOD.replace("cdr_id = 11", "cdr_id = 0"))
    vectors = VECTORS / "basic"
    for command in ("rate", "ingest"):
        extra = ("--plans", vectors / "plans", "--accounts", vectors / "accounts.toml", "--out", tmp_path / "o")
        run = run_cdrflow(command, vectors / "cdrs.csv", *(extra if command == "rate" else ()),
                          "--format", "mapped", "--profile", path)  # fmt: skip
        assert run.returncode == 2, run.stderr
        said = "".join(run.stderr.split())
        assert f"{path}:keycolumns.cdr_id.column:acolumnisanameorapositionfrom1" in said
        assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (("--format", "mapped"), "--format mapped needs --profile"),
        (("--format", "asterisk", "--profile", FREESWITCH), "--profile is for --format mapped"),
        (("--format", "xml"), "--format must be one of canonical, asterisk, mapped"),
        (("--format", "asterisk", "--switch-timezone", "CST"), "'CST' is not an IANA timezone name"),
        (("--switch-id", "sw1"), "--switch-timezone and --switch-id are for switch formats"),
    ],
)
def test_cli_refuses_wrong_format_options(options: tuple[str, ...], words: str, tmp_path: Path) -> None:
    vectors = VECTORS / "basic"
    run = run_cdrflow("rate", vectors / "cdrs.csv", "--plans", vectors / "plans", "--accounts",
                      vectors / "accounts.toml", "--out", tmp_path / "o", *options)  # fmt: skip
    assert run.returncode == 2
    assert words in " ".join(run.stderr.split())
    assert "Traceback" not in run.stderr


def test_a_header_profile_names_a_missing_column(tmp_path: Path) -> None:
    vectors = VECTORS / "basic"
    text = CANONICAL.read_text(encoding="utf-8").replace('caller = "caller"', 'caller = "src"')
    feed = Feed.of("mapped", profile=_profile(tmp_path, text))
    with pytest.raises(HeaderError, match=r"line 1: the header has no column 'src' \(profile key columns.caller\)"):
        feed.layout((vectors / "cdrs.csv").read_bytes().split(b"\n", 1)[0])
    run = run_cdrflow("rate", vectors / "cdrs.csv", "--plans", vectors / "plans", "--accounts",
                      vectors / "accounts.toml", "--out", tmp_path / "o", "--format", "mapped",
                      "--profile", tmp_path / "switch.toml")  # fmt: skip
    assert run.returncode == 2 and "cdrs.csv: line 1: the header has no column 'src'" in " ".join(run.stderr.split())


def test_a_mapped_profile_with_names_regex_and_its_own_delimiter(tmp_path: Path) -> None:
    """A semicolon-separated export with a header (one column named "line"), a regex on the
    caller and a disposition map."""
    profile = _profile(tmp_path, """
name = "acme"
delimiter = ";"
quoted = false
time_format = "%d.%m.%Y %H:%M:%S"
timezone = "Asia/Urumqi"
switch_id = "acme-1"
[columns]
cdr_id = "id"
caller = { column = "from", regex = 'tel:(\\+?\\d+)' }
called = "to"
answer_number = "forwarded"
start_time = "begin"
answer_time = "connect"
end_time = "finish"
billsec = "talk"
disposition = "status"
[disposition]
rules = [{ values = ["OK"], billsec = "positive", to = "ANSWERED" }, { values = ["OK"], billsec = "zero", to = "NO ANSWER" }]
""")
    data = (
        "id;from;to;forwarded;begin;connect;finish;talk;status;line\n"
        "a1;tel:+8613800138000;4008001234;075512345678;02.03.2026 09:00:00;02.03.2026 09:00:05;02.03.2026 09:01:05;60;OK;7\n"
        "a2;sip:anonymous;4008001234;075512345678;02.03.2026 09:00:00;;02.03.2026 09:00:20;0;OK;7\n"
        "a3;tel:01062345678;4008001234;075512345678;02.03.2026 09:00:00;;02.03.2026 09:00:20;0;OK;7\n"
    ).encode()
    feed = Feed.of("mapped", profile=profile)
    header, body = data.split(b"\n", 1)
    rows = feed.layout(header).parse(body, 2).to_dicts()
    assert [r["line"] for r in rows] == [2, 3, 4]
    assert rows[0]["caller"] == "+8613800138000" and rows[0]["caller_area"] == "010"
    assert rows[0]["answer_area"] == "0755" and rows[0]["switch_id"] == "acme-1"
    assert rows[0]["start_time"] == "2026-03-02T09:00:00+06:00" and rows[0]["disposition"] == "ANSWERED"
    # the regex found no number: a caller without an area, rated by its plan's rule
    assert rows[1]["framing"] is None and (rows[1]["caller_area"], rows[1]["caller_origin"]) == ("", "unknown")
    assert rows[2]["disposition"] == "NO ANSWER" and rows[2]["framing"] is None


def test_the_example_profiles_load() -> None:
    assert load_profile(FREESWITCH).columns_per_line == 16
    assert load_profile(CANONICAL).derives_areas is False
    assert asterisk_profile().derives_areas is True


def test_generate_writes_master_csv_from_the_cli(tmp_path: Path) -> None:
    run = run_cdrflow("generate", "--out", tmp_path, "--cdrs", "500", "--accounts", "20", "--format", "asterisk",
                      "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["cdrs_file"] == str(tmp_path / "Master.csv")
    assert not (tmp_path / "cdrs.csv").exists()
    assert len((tmp_path / "Master.csv").read_text(encoding="utf-8").splitlines()) == 500
    shutil.rmtree(tmp_path)


# ------------------------------------------------------------ what real switches write


def test_generated_quirks_rate_alike_in_both_formats_and_in_gbk(tmp_path: Path) -> None:
    """generate --quirks: callers as +86/86/same-city/withheld/masked numbers, 0 s legs before
    answered calls, Chinese names; the Asterisk file in GBK. Both formats rate alike."""
    options = {"cdrs": 4_000, "accounts": 60, "month": "2026-03", "seed": 5, "quirks": True}
    canonical = generate_dataset(tmp_path / "c", **options)
    asterisk = generate_dataset(tmp_path / "a", **options, cdr_format="asterisk", encoding="gbk")
    assert canonical.unknown_callers > 50 and canonical.extra_legs == 80
    raw = asterisk.cdrs_file.read_bytes()
    assert "张三".encode("gbk") in raw and "张三".encode() not in raw
    rate_file(canonical.cdrs_file, _catalog(canonical), tmp_path / "oc")
    summary = rate_file(asterisk.cdrs_file, _catalog(asterisk), tmp_path / "oa", feed=Feed.of("asterisk", encoding="gbk"))
    want, got = _shifted(_outputs(tmp_path / "oc"), -1), _outputs(tmp_path / "oa")
    assert got["rated"].drop("caller_origin").equals(want["rated"].drop("caller_origin"))
    assert got["alerts"].equals(want["alerts"])
    keys = ["line", "cdr_id", "reason"]
    assert got["rejected"].select(keys).equals(want["rejected"].select(keys))
    # every caller was billed: withheld and masked callers by their plan's unknown_caller_class
    origins = got["rated"].group_by("caller_origin").len().sort("caller_origin").rows()
    assert [origin for origin, _ in origins] == ["area", "same_city", "unknown"]
    assert "malformed" not in {r for r in summary.rejected if summary.rejected[r] > canonical.malformed}
    # the 0 s legs did not make their calls duplicates: each answered leg was rated
    legs = got["rated"].filter(pl.col("cdr_id").is_duplicated())
    assert legs.height >= 2 * 70 and set(legs.get_column("status")) == {"rated", "unbilled"}


def test_a_freeswitch_name_with_quotes_and_commas_is_read_as_written() -> None:
    feed = Feed.of("mapped", profile=PROFILES_DIR / "freeswitch-answering.toml")
    line = ('"Smith "JJ", John","13800138000","4008001234","public","2026-03-02 09:00:00","2026-03-02 09:00:05",'
            '"2026-03-02 09:02:10","130","125","NORMAL_CLEARING","u1","","","PCMA","PCMA","sofia/gateway/gw/01088886666"')  # fmt: skip
    chinese = line.replace('Smith "JJ", John', "张三, 销售部").replace('"u1"', '"u2"')
    rows = feed.layout(None).parse(f"{line}\n{chinese}\n".encode(), 1).to_dicts()
    assert [(r["cdr_id"], r["framing"], r["disposition"], r["answer_area"]) for r in rows] == [
        ("u1", None, "ANSWERED", "010"), ("u2", None, "ANSWERED", "010")
    ]


def test_bytes_that_are_not_utf8_count_only_in_the_fields_used() -> None:
    good = _asterisk().encode()
    bad_name = good.replace("Zhang, San".encode(), b"Zhang\xa5\xa5")
    bad_caller = good.replace(b'"13800138000"', b'"1380\xa5138000"', 1)
    rows = _frame_bytes(bad_name + b"\n" + bad_caller + b"\n").to_dicts()
    assert rows[0]["framing"] is None and rows[0]["cdr_id"] == "1772413200.1"
    # a used field (src) that is not UTF-8: malformed, and its id is still read
    assert rows[1]["framing"].startswith("not UTF-8") and rows[1]["cdr_id"] == "1772413200.1"


def _frame_bytes(data: bytes, feed: Feed | None = None) -> pl.DataFrame:
    feed = feed or Feed.of("asterisk")
    return feed.layout(None).parse(data, 1)


def test_a_byte_order_mark_before_a_headerless_file_is_not_part_of_its_first_field() -> None:
    rows = _frame_bytes(b"\xef\xbb\xbf" + _asterisk().encode() + b"\n").to_dicts()
    assert rows[0]["framing"] is None and rows[0]["caller"] == "13800138000"


@pytest.mark.parametrize(
    ("written", "normalised"),
    [("+864008001234", "4008001234"), ("864008001234", "4008001234"), ("04008001234", "4008001234"),
     (" 4008001234", "4008001234"), ("400-800-1234", "4008001234"), ("4008001234", "4008001234")],
)
def test_a_called_number_is_normalised_before_the_account_lookup(written: str, normalised: str) -> None:
    (row,) = _frame_bytes(_asterisk(dst=written).encode() + b"\n").to_dicts()
    assert row["called"] == normalised


@pytest.mark.parametrize(
    ("caller", "area", "origin"),
    [("13800138000", "010", "area"), ("+8613800138000", "010", "area"), ("8613800138000", "010", "area"),
     ("861062345678", "010", "area"), ("62345678", "010", "same_city"), ("anonymous", "", "unknown"),
     ("", "", "unknown"), ("1862831****", "", "unknown"), ("1001", "", "unknown"), (" 02161234567", "021", "area"),
     ("+14155550123", "+1", "area")],
)
def test_every_caller_is_placed_and_none_is_malformed(caller: str, area: str, origin: str) -> None:
    for disposition, billsec in (("ANSWERED", "60"), ("NO ANSWER", "0")):
        (row,) = _frame_bytes(_asterisk(src=caller, disposition=disposition, billsec=billsec).encode() + b"\n").to_dicts()
        assert (row["caller_area"], row["caller_origin"], row["framing"]) == (area, origin, None)


def test_an_unknown_number_is_judged_before_the_answering_side(tmp_path: Path) -> None:
    vectors = VECTORS / "basic"
    (tmp_path / "Master.csv").write_text(
        _asterisk(dst="4009999999", userfield="1001", lastdata="", uniqueid="u1") + "\n"
        + _asterisk(dst="4008001234", userfield="1001", lastdata="", uniqueid="u2") + "\n",
        encoding="utf-8",
    )
    rate_file(tmp_path / "Master.csv", Catalog.from_tariffs(load_tariffs(vectors / "plans", vectors / "accounts.toml")),
              tmp_path / "out", feed=Feed.of("asterisk"))  # fmt: skip
    rejected = pl.read_csv(tmp_path / "out" / "rejected.csv", infer_schema=False)
    assert rejected.select("cdr_id", "reason").rows() == [("u1", "unknown_number"), ("u2", "malformed")]
