"""A quarter of three accounts through the ledger, on the real broker and ClickHouse.

Every command goes through the ``cdrflow`` CLI (typer's runner, this test's topics and
database), every call through a real worker, and every balance is checked to the unit
against the figures worked out by hand in the comments (CNY; plan ``biz``: rent 310.00 a
month, minimum spend 100.00, opening fee 50.00, every minute 1.00).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from typer.testing import CliRunner

from schemas.ledger import LedgerCommand
from schemas.money import parse_money
from streams.catalog.publish import publish_tariffs, read_catalog
from streams.cli.main import app
from streams.kafka.client import read_to_end
from streams.ledger import commands as ledger_ops
from streams.settings import Settings
from tariffs import load_tariffs
from tests.integration.pipeline import Pipeline

PLAN = """
id = "biz"
timezone = "Asia/Shanghai"

[[versions]]
effective_from = 2026-01-01T00:00:00+08:00
monthly_rent = "310.00"
minimum_monthly_spend = "100.00"
opening_fee = "50.00"
increment = { first = 60, next = 60 }

[[versions.rates]]
segment = "*"
class = "local"
tiers = [{ per_minute = "1.00" }]

[[versions.rates]]
segment = "*"
class = "long_distance"
tiers = [{ per_minute = "1.00" }]
"""
ACCOUNTS = """
[[accounts]]
id = "IMP"
plan = "biz"
numbers = ["4005550001"]
opening_balance = "1000.00"
opened_at = 2026-02-01T00:00:00+08:00
"""
GRADES = '[fees]\nA = "2000.00"\n'
HEADER = "cdr_id,switch_id,caller,called,answer_number,caller_area,answer_area,start_time,answer_time,end_time,billsec,disposition"




def _cli(pipeline: Pipeline):
    settings = pipeline.settings
    env = {
        "CDRFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "CDRFLOW_CLICKHOUSE_URL": settings.clickhouse_url or "",
        "CDRFLOW_TOPIC_PREFIX": pipeline.prefix,
        "CDRFLOW_STATE_DIR": str(settings.state_dir),
    }

    def run(*args: str, ok: bool = True):
        result = CliRunner().invoke(app, list(args), env=env)
        if ok:
            assert result.exit_code == 0, f"cdrflow {' '.join(args)}: {result.output}"
        return result

    return run


def _call(cdr_id: str, called: str, start: str, seconds: int) -> str:
    # start like 2026-03-12T10:00:00+08:00; answered at start, local call in Beijing
    hh, mm = int(start[11:13]), int(start[14:16])
    end = f"{start[:11]}{hh + (mm + seconds // 60) // 60:02d}:{(mm + seconds // 60) % 60:02d}:{seconds % 60:02d}{start[19:]}"
    return f"{cdr_id},sw1,01062345678,{called},01088886666,010,010,{start},{start},{end},{seconds},ANSWERED"


def _send_calls(pipeline: Pipeline, tmp_path: Path, name: str, lines: list[str]) -> None:
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    tariffs = read_catalog(pipeline.settings, topic_prefix=pipeline.prefix)
    pipeline.produce(pipeline.cdr_messages(path, tariffs, name))


def _balances(pipeline: Pipeline) -> dict[str, tuple[int, str]]:
    rows = pipeline.client().execute(
        "SELECT account_id, argMax(balance, version), argMax(state, version) FROM account_balances GROUP BY account_id"
    )
    return {a: (int(b), s) for a, b, s in rows}


def _wait_calls(pipeline: Pipeline, count: int) -> None:
    pipeline.wait_until(lambda c: c["rated_calls"] + c["rejected_cdrs"] >= count, timeout_s=120, what="calls landed")
    time.sleep(1.5)  # the balance rows land through their own sink


def _cny(text: str) -> int:
    return parse_money(text, signed=True)


def test_a_quarter_of_three_accounts_balances_to_the_unit(pipeline: Pipeline, tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "biz.toml").write_text(PLAN)
    (plans / "number_grades.toml").write_text(GRADES)
    (tmp_path / "accounts.toml").write_text(ACCOUNTS)
    publish_tariffs(pipeline.settings, load_tariffs(plans, tmp_path / "accounts.toml"), tmp_path / "accounts.toml",
                    topic_prefix=pipeline.prefix)
    pipeline.start_worker()
    cli = _cli(pipeline)

    # Opening with graded numbers: S 10000.00 (default), C 0.00, A 2000.00 (number_grades.toml).
    assert json.loads(cli("number", "grade", "4001377770", "--json").stdout) == {
        "number": "4001377770", "grade": "A", "fee": "2000.0000"}
    cli("account", "open", "--id", "E1", "--plan", "biz", "--numbers", "4008123456,4001302468",
        "--opening-balance", "12000.00", "--at", "2026-03-11T09:00:00+08:00")
    opened = cli("account", "open", "--id", "E2", "--plan", "biz", "--numbers", "4001377770",
                 "--opening-balance", "100.00", "--at", "2026-02-20T09:00:00+08:00", "--json")
    e2 = json.loads(opened.stdout)[0]
    assert [e["kind"] for e in e2["events"]] == ["AccountOpened", "NumberAssigned", "AccountSuspended"]
    assert (e2["balance"], e2["state"]) == ("-1950.0000", "suspended")  # 100 - 50 - 2000
    assert cli("account", "open", "--id", "E3", "--plan", "nope", "--numbers", "4001302469", ok=False).exit_code != 0

    # Traffic: E1 3 x 2 min, IMP 1 min, E2 1 min while suspended (rated: the call happened).
    _send_calls(pipeline, tmp_path, "march.csv", [
        _call("c1", "4008123456", "2026-03-12T10:00:00+08:00", 120),
        _call("c2", "4001302468", "2026-03-12T11:00:00+08:00", 120),
        _call("c3", "4008123456", "2026-03-12T12:00:00+08:00", 120),
        _call("c4", "4005550001", "2026-03-12T10:00:00+08:00", 60),
        _call("c5", "4001377770", "2026-03-15T10:00:00+08:00", 60),
    ])
    _wait_calls(pipeline, 5)
    assert _balances(pipeline) == {
        "E1": (_cny("1944.00"), "active"), "E2": (_cny("-1951.00"), "suspended"), "IMP": (_cny("999.00"), "active")}

    # Top-ups: arrears paid back reactivates; the same reference is recorded once.
    cli("account", "topup", "E2", "2000.00", "--ref", "PAY-E2", "--at", "2026-03-16T10:00:00+08:00")
    again = cli("account", "topup", "E2", "2000.00", "--ref", "PAY-E2", "--at", "2026-03-16T10:00:00+08:00")
    assert "already recorded" in again.stdout
    for bad in (["--ref", "PAY-E2", "E2", "2500.00"], ["--ref", "X", "--", "E2", "-5.00"],
                ["--ref", "Y", "E2", "1.00001"], ["--ref", "Z", "NOPE", "5.00"]):
        refused = cli("account", "topup", *bad, ok=False)
        assert refused.exit_code != 0 and "nothing was written" in refused.output, refused.output
    assert _balances(pipeline)["E2"] == (_cny("49.00"), "active")

    # Services, keep-number (a call while kept is rejected), SLA credit (3 days x 10.00).
    cli("account", "services", "E1", "--enable", "ivr", "--at", "2026-03-15T00:00:00+08:00")
    cli("account", "keep", "E2", "--at", "2026-03-20T00:00:00+08:00")
    _send_calls(pipeline, tmp_path, "kept.csv", [_call("c6", "4001377770", "2026-03-25T10:00:00+08:00", 60)])
    _wait_calls(pipeline, 6)
    rejected = pipeline.client().execute("SELECT cdr_id, reason FROM rejected_cdrs FINAL WHERE account_id = 'E2'")
    assert rejected == [("c6", "account_inactive")]
    sla = json.loads(cli("sla-credit", "E1", "--start", "2026-03-21T21:00:00+08:00", "--end",
                         "2026-03-23T03:00:00+08:00", "--json").stdout)[0]
    assert [(e["kind"], e["amount"]) for e in sla["events"]] == [("SlaCreditGranted", "10.0000")] * 3
    assert sla["balance"] == "1974.0000"

    # Month close of March, twice; closing April before it ended is refused.
    refused = cli("close-month", "2026-04", "--at", "2026-04-30T12:00:00+08:00", ok=False)
    assert refused.exit_code != 0 and "has not ended" in refused.output
    cli("close-month", "2026-03", "--at", "2026-04-02T00:00:00+08:00")
    expected = {
        "E1": (_cny("1734.00"), "active"),  # 1974 - rent 310 x 21/31 = 210 - ivr 30
        "E2": (_cny("-261.00"), "kept"),  # 49 - rent 310 (kept from the 20th only); kept: not suspended
        "IMP": (_cny("590.00"), "active"),  # 999 - 310 - minimum spend (100 - 1)
    }
    assert _balances(pipeline) == expected
    cli("close-month", "2026-03", "--at", "2026-04-02T00:00:00+08:00")
    assert _balances(pipeline) == expected

    # Back from keep-number in arrears (suspended), paid back; E1 cancels.
    cli("account", "resume", "E2", "--at", "2026-04-05T00:00:00+08:00")
    assert _balances(pipeline)["E2"] == (_cny("-261.00"), "suspended")
    cli("account", "topup", "E2", "300.00", "--ref", "PAY-E2b", "--at", "2026-04-06T00:00:00+08:00")
    cli("account", "cancel", "E1", "--at", "2026-04-10T12:00:00+08:00")

    # April's close, with the worker killed (SIGKILL) while it folds it, then restarted.
    settings = Settings(**{**pipeline.settings.model_dump(), "topic_prefix": pipeline.prefix})
    commands = [LedgerCommand(kind="close_month", account_id=a, at="2026-05-02T00:00:00+08:00", month="2026-04")
                for a in ("E1", "E2", "IMP")]
    published = ledger_ops.publish(settings, commands)
    time.sleep(random.uniform(0.0, 1.0))
    pipeline.workers[-1].kill()
    pipeline.start_worker()
    ledger_ops.wait_folded(pipeline.client(), published)
    cli("close-month", "2026-04", "--at", "2026-05-02T00:00:00+08:00")  # the same again: nothing
    time.sleep(1.5)
    assert _balances(pipeline) == {
        "E1": (_cny("1294.00"), "cancelling"),  # 1734 - 310 - 30 - minimum spend 100 (no calls)
        "E2": (_cny("-286.00"), "suspended"),  # 39 - 310 - keep-number fee 15 (kept on 1 April)
        "IMP": (_cny("180.00"), "active"),  # 590 - 310 - 100
    }

    # May: E1's notice ends on the 10th: frozen, May's charges, then the refund of the rest.
    cli("close-month", "2026-05", "--at", "2026-06-02T00:00:00+08:00")
    assert _balances(pipeline) == {
        "E1": (0, "frozen"),  # 1294 - 310 - 30 = 954 refunded
        "E2": (_cny("-696.00"), "suspended"),  # -286 - 310 - minimum spend 100
        "IMP": (_cny("-230.00"), "suspended"),  # 180 - 310 - 100
    }
    history = json.loads(cli("account", "history", "E1", "--json").stdout)
    refund = [h for h in history if h["kind"] == "RefundIssued"]
    assert [h["amount"] for h in refund] == ["-954.0000"]
    assert sum(_cny(h["amount"]) for h in history) == 0  # every unit of E1 explained
    shown = json.loads(cli("account", "show", "IMP", "--json").stdout)
    assert (shown["balance"], shown["state"]) == ("-230.0000", "suspended")
    blocked = ledger_ops.client(settings).execute(
        "SELECT kind FROM alerts FINAL WHERE account_id = 'IMP' ORDER BY kind")
    assert [k for (k,) in blocked] == ["arrears", "low_balance"]

    # Finance's statements, from what the worker landed, add up to the ledger's balances.
    for account, month, opening, closing in (
        ("IMP", "2026-03", "1000.0000", "590.0000"),
        ("E2", "2026-03", "-1950.0000", "-261.0000"),
        ("E1", "2026-04", "1734.0000", "1294.0000"),
        ("E1", "2026-05", "1294.0000", "0.0000"),
    ):
        statement = json.loads(
            cli("report", "statement", "--account", account, "--month", month, "--format", "json").stdout
        )
        assert (statement["opening_balance"], statement["closing_balance"]) == (opening, closing), statement
        assert sum(_cny(line["amount"]) for line in statement["lines"]) == _cny(closing) - _cny(opening)

    # 90 days frozen after 10 May: closed by August's close; a closed account cannot cancel.
    cli("close-month", "2026-08", "--at", "2026-09-02T00:00:00+08:00")
    assert _balances(pipeline)["E1"] == (0, "closed")
    refused = cli("account", "cancel", "E1", ok=False)
    assert refused.exit_code != 0 and "closed" in refused.output and "nothing was written" in refused.output
    statuses = {
        r.key.decode(): json.loads(r.value)["status"]
        for r in read_to_end(settings, pipeline.topic("number.status"))
    }
    assert statuses == {"4008123456": "released", "4001302468": "released", "4001377770": "blocked",
                        "4005550001": "blocked"}

    # The projections rebuilt from the log are what they were.
    pipeline.stop_workers()
    db = pipeline.client()
    snapshot_sql = {
        "billing_events": "SELECT * FROM billing_events FINAL ORDER BY account_id, event_id",
        "account_balances": "SELECT account_id, argMax(balance, version), argMax(state, version), max(version) "
        "FROM account_balances GROUP BY account_id ORDER BY account_id",
        "rated_calls": "SELECT * FROM rated_calls FINAL ORDER BY account_id, cdr_id",
        "alerts": "SELECT * FROM alerts FINAL ORDER BY account_id, kind, cdr_id",
    }
    before = {name: db.execute(sql) for name, sql in snapshot_sql.items()}
    assert len(before["billing_events"]) > 20
    cli("rebuild")
    assert {name: db.execute(sql) for name, sql in snapshot_sql.items()} == before
