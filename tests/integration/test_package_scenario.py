"""Real 400 packages (issue 23) through the ledger, on the real broker and ClickHouse.

Every command goes through the ``cdrflow`` CLI, every call through a real worker, and
every figure is checked to the unit against the hand computation in the comments (CNY):

- plan ``pkg1m``: a 1-month package of 100.00 at 0.12 a minute for any caller, top-ups
  of at least 50.00;
- plan ``floor50``: a floor of 50.00 per 400 number, the opening month in full, 0.10 a
  minute for any caller.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from streams.catalog.publish import publish_tariffs, read_catalog
from tariffs import load_tariffs
from tests.integration.pipeline import Pipeline
from tests.integration.test_ledger_scenario import HEADER, _balances, _cli, _cny, _wait_calls

PACKAGE_PLAN = """
id = "pkg1m"
timezone = "Asia/Shanghai"

[[versions]]
effective_from = 2026-01-01T00:00:00+08:00
min_topup = "50.00"
increment = { first = 60, next = 60 }

[versions.package]
price = "100.00"
term_months = 1

[[versions.rates]]
segment = "*"
class = "*"
tiers = [{ per_minute = "0.12" }]
"""
FLOOR_PLAN = """
id = "floor50"
timezone = "Asia/Shanghai"

[[versions]]
effective_from = 2026-01-01T00:00:00+08:00
minimum_monthly_spend = "50.00"
minimum_scope = "number"
first_month = "full"
increment = { first = 60, next = 60 }

[[versions.rates]]
segment = "*"
class = "*"
tiers = [{ per_minute = "0.10" }]
"""
PK_NUMBER = "4006135792"  # grade C: no selection fee
FL_NUMBERS = ("4007246813", "4007259361")  # grade C


def _line(cdr_id: str, called: str, answered: str, seconds: int, caller: str, caller_area: str) -> str:
    """An answered call, rung 5 s before ``answered``, answered in Beijing (010)."""
    at = datetime.fromisoformat(answered)
    stamp = lambda t: t.isoformat()  # noqa: E731
    return ",".join([cdr_id, "sw1", caller, called, "01088886666", caller_area, "010",
                     stamp(at - timedelta(seconds=5)), stamp(at), stamp(at + timedelta(seconds=seconds)),
                     str(seconds), "ANSWERED"])


def _send(pipeline: Pipeline, tmp_path: Path, name: str, lines: list[str]) -> None:
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    pipeline.produce(pipeline.cdr_messages(path, read_catalog(pipeline.settings, topic_prefix=pipeline.prefix), name))


def test_a_term_package_and_floors_per_number_to_the_unit(pipeline: Pipeline, tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "pkg1m.toml").write_text(PACKAGE_PLAN)
    (plans / "floor50.toml").write_text(FLOOR_PLAN)
    (tmp_path / "accounts.toml").write_text("")
    publish_tariffs(pipeline.settings, load_tariffs(plans, tmp_path / "accounts.toml"), tmp_path / "accounts.toml",
                    topic_prefix=pipeline.prefix)
    pipeline.start_worker()
    cli = _cli(pipeline)

    # Opening buys the package: 150.00 - 100.00 = 50.00 on the balance, 100.00 of credit
    # until a month later, 2026-04-10 09:00.
    opened = json.loads(cli("account", "open", "--id", "PK", "--plan", "pkg1m", "--numbers", PK_NUMBER,
                            "--opening-balance", "150.00", "--at", "2026-03-10T09:00:00+08:00", "--json").stdout)[0]
    assert [e["kind"] for e in opened["events"]] == ["AccountOpened", "NumberAssigned", "PackagePurchased"]
    assert (opened["balance"], opened["credit"]) == ("50.0000", "100.0000")
    shown = json.loads(cli("account", "show", "PK", "--json").stdout)
    assert (shown["balance"], shown["credit"], shown["credit_expires"]) == (
        "50.0000", "100.0000", "2026-04-10T09:00:00+08:00")
    refused = cli("account", "open", "--id", "PK2", "--plan", "pkg1m", "--numbers", "4006135793",
                  "--opening-balance", "99.00", ok=False)
    assert refused.exit_code != 0 and "does not pay for the package" in refused.output

    # Two numbers on a floor of 50.00 each, opened in full in March.
    cli("account", "open", "--id", "FL", "--plan", "floor50", "--numbers", ",".join(FL_NUMBERS),
        "--opening-balance", "200.00", "--at", "2026-03-10T09:00:00+08:00")

    # 3 min from a withheld caller (no number, no area) and 10 min from London, both at
    # 0.12 (one rate for every caller): 13 x 0.12 = 1.56 from the credit: 98.44 left, the
    # balance untouched. FL: 10 min at 0.10 = 1.00 on its first number.
    _send(pipeline, tmp_path, "march.csv", [
        _line("c1", PK_NUMBER, "2026-03-12T10:00:00+08:00", 180, "", ""),
        _line("c2", PK_NUMBER, "2026-03-15T10:00:00+08:00", 600, "+442079460000", "+44"),
        _line("c3", FL_NUMBERS[0], "2026-03-16T10:00:00+08:00", 600, "13800138000", "010"),
    ])
    _wait_calls(pipeline, 3)
    shown = json.loads(cli("account", "show", "PK", "--json").stdout)
    assert (shown["balance"], shown["credit"]) == ("50.0000", "98.4400")

    # March's close: FL pays each number's floor less its own calls: 49.00 + 50.00 = 99.00
    # (200 - 1 - 99 = 100.00). PK has no floor and no rent: nothing.
    closed = json.loads(cli("close-month", "2026-03", "--at", "2026-04-02T00:00:00+08:00", "--json").stdout)
    fl = next(r for r in closed if r["account_id"] == "FL")
    assert sorted((e["reference"], e["amount"]) for e in fl["events"] if e["kind"] != "MonthClosed") == [
        ("2026-03", "-49.0000"), ("2026-03", "-50.0000")]
    assert sum(_cny(e["amount"]) for e in fl["events"]) == -_cny("99.00")
    assert _balances(pipeline)["FL"] == (_cny("100.00"), "active")
    assert [e["kind"] for e in next(r for r in closed if r["account_id"] == "PK")["events"]] == ["MonthClosed"]

    # A call after the term: the 98.44 left is forfeited at the end of the term, and the
    # call's 0.12 comes from the balance: 49.88; funds fall from 50.00 to 49.88: low_balance.
    _send(pipeline, tmp_path, "april.csv", [_line("c4", PK_NUMBER, "2026-04-10T10:00:00+08:00", 60, "13800138000", "010")])
    _wait_calls(pipeline, 4)
    shown = json.loads(cli("account", "show", "PK", "--json").stdout)
    assert (shown["balance"], shown["credit"], shown["credit_expires"]) == ("49.8800", "0.0000", None)
    history = json.loads(cli("account", "history", "PK", "--json").stdout)
    ended = [h for h in history if h["kind"] == "PackageCreditExpired"]
    assert [(h["amount"], h["credit"], h["at"]) for h in ended] == [("0.0000", "0.0000", "2026-04-10T01:00:00+00:00")]
    assert [h["kind"] for h in history][-2:] == ["PackageCreditExpired", "CallRated"]  # before the call it came with
    assert [a["kind"] for a in shown["alerts"]] == ["low_balance"]

    # A top-up under the plan's 50.00 minimum is refused before anything is written.
    refused = cli("account", "topup", "PK", "10.00", "--ref", "SMALL", ok=False)
    assert refused.exit_code != 0 and "minimum top-up" in refused.output and "50.0000" in refused.output
    assert "nothing was written" in refused.output
    # A renewal restarts the credit: 49.88 + 60.00 - 100.00 = 9.88, credit 100.00 until 05-12.
    refused = cli("account", "renew", "PK", "--at", "2026-04-11T09:00:00+08:00", ok=False)
    assert refused.exit_code != 0 and "top up first" in refused.output
    cli("account", "topup", "PK", "60.00", "--ref", "T2", "--at", "2026-04-11T10:00:00+08:00")
    renewed = json.loads(cli("account", "renew", "PK", "--at", "2026-04-12T09:00:00+08:00", "--json").stdout)[0]
    assert [(e["kind"], e["amount"], e["credit_change"]) for e in renewed["events"]] == [
        ("PackageRenewed", "-100.0000", "100.0000")]
    shown = json.loads(cli("account", "show", "PK", "--json").stdout)
    assert (shown["balance"], shown["credit"], shown["credit_expires"]) == (
        "9.8800", "100.0000", "2026-05-12T09:00:00+08:00")

    # Finance: March's statement of PK keeps the credit in its own column; April's shows the
    # forfeited 98.44 as breakage, and revenue has it as a line of its own.
    march = json.loads(cli("report", "statement", "--account", "PK", "--month", "2026-03", "--format", "json").stdout)
    assert (march["opening_balance"], march["closing_balance"]) == ("150.0000", "50.0000")
    assert (march["opening_credit"], march["closing_credit"]) == ("0.0000", "98.4400")
    assert sorted((line["kind"], line["amount"], line["credit"]) for line in march["lines"]) == [
        ("calls", "0.0000", "-0.3600"),  # long distance: the withheld caller's area is not 010
        ("calls", "0.0000", "-1.2000"),  # international
        ("package", "-100.0000", "100.0000"),
    ]
    april = json.loads(cli("report", "statement", "--account", "PK", "--month", "2026-04", "--format", "json").stdout)
    assert (april["opening_balance"], april["closing_balance"]) == ("50.0000", "9.8800")
    assert (april["opening_credit"], april["closing_credit"]) == ("98.4400", "100.0000")
    breakage = [line for line in april["lines"] if line["kind"] == "breakage"]
    assert [(line["amount"], line["credit"]) for line in breakage] == [("0.0000", "-98.4400")]
    revenue = json.loads(cli("report", "revenue", "--from", "2026-04-01", "--to", "2026-04-30", "--by", "account",
                             "--format", "json").stdout)
    assert revenue[-1] == {"account": "breakage", "calls": 0, "minutes": "0.00", "amount": "98.4400"}
