"""Issue 15, done when: a month rated with a wrong per-minute rate, corrected on the real stack.

Three accounts rate the first 20 days of March 2026 with plans whose first local tier is
wrong (one dearer, one cheaper). The plans are fixed; ``cdrflow rerate --dry-run`` must
show exactly the difference of two offline runs; ``--apply`` runs with the worker killed
(SIGKILL) once while it folds the correction; then the rest of March and early April come.
In the end every balance and ``cdrflow export`` equal an offline run with the right plans
from the start, a second ``--apply`` changes nothing, and finance sees the correction in
the month it was applied (the call lines as billed) and revenue as billed or as corrected.
Last, a call rejected ``late`` is rated by a correction of its day.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from typer.testing import CliRunner

from rating import Catalog
from schemas.money import parse_money
from streams.catalog.publish import publish_tariffs, read_catalog
from streams.cli.main import app
from streams.offline.compare import compare_outputs
from streams.offline.rate import rate_file
from tariffs import load_tariffs
from tests.conftest import CDRFLOW
from tests.integration.pipeline import Pipeline, read_csv_rows

pytestmark = pytest.mark.integration

PLANS = {
    "std": """
id = "std"
timezone = "Asia/Shanghai"

[[versions]]
effective_from = 2026-01-01T00:00:00+08:00
monthly_rent = "100.00"
included_minutes = 30
per_call_minimum = "0.10"
daily_cap = "30.00"
increment = { first = 60, next = 60 }

[[versions.rates]]
segment = "*"
class = "local"
tiers = [{ up_to_minutes = 200, per_minute = "0.20" }, { per_minute = "0.15" }]

[[versions.rates]]
segment = "*"
class = "long_distance"
tiers = [{ per_minute = "0.40" }]
""",
    "eco": """
id = "eco"
timezone = "Asia/Shanghai"

[[versions]]
effective_from = 2026-01-01T00:00:00+08:00
monthly_rent = "50.00"
increment = { first = 30, next = 6 }

[[versions.rates]]
segment = "*"
class = "local"
tiers = [{ per_minute = "0.30" }]

[[versions.rates]]
segment = "*"
class = "long_distance"
tiers = [{ per_minute = "0.50" }]
""",
}
#: The wrong rates billed first: std's first tier dearer, eco's local rate cheaper.
WRONG = {"std": ('up_to_minutes = 200, per_minute = "0.20"', 'up_to_minutes = 200, per_minute = "0.25"'),
         "eco": ('tiers = [{ per_minute = "0.30" }]', 'tiers = [{ per_minute = "0.10" }]')}
ACCOUNTS = """
[[accounts]]
id = "A1"
plan = "std"
numbers = ["4008100001"]
opening_balance = "230.00"
low_balance_threshold = "100.00"

[[accounts]]
id = "A2"
plan = "eco"
numbers = ["4007200002"]
opening_balance = "260.00"
low_balance_threshold = "80.00"

[[accounts]]
id = "A3"
plan = "std"
numbers = ["4001300003", "4001300004"]
opening_balance = "5000.00"
"""
HEADER = "cdr_id,switch_id,caller,called,answer_number,caller_area,answer_area,start_time,answer_time,end_time,billsec,disposition"
CST = timezone(timedelta(hours=8))


def _traffic(seed: int, first_day: datetime, days: int, prefix: str) -> list[str]:
    """Calls of the three accounts, day by day (a heavy day on the 12th hits the caps)."""
    rng = random.Random(seed)
    lines = []
    numbers = ["4008100001", "4007200002", "4001300003", "4001300004"]
    for day in range(days):
        start_of_day = first_day + timedelta(days=day)
        heavy = start_of_day.day == 12
        for number in numbers:
            for index in range(rng.randint(14, 20) if heavy else rng.randint(2, 6)):
                start = start_of_day + timedelta(hours=8, minutes=rng.randint(0, 12 * 60 - 1), seconds=rng.randint(0, 59))
                caller_area = rng.choice(["010", "010", "010", "021"])
                cdr_id = f"{prefix}-{number[-4:]}-{start:%m%d}-{index:02d}"
                stamp = start.isoformat()
                if rng.random() < 0.1:
                    end = (start + timedelta(seconds=25)).isoformat()
                    lines.append(f"{cdr_id},sw1,13800138000,{number},01088886666,{caller_area},010,{stamp},,{end},0,NO ANSWER")
                    continue
                billsec = rng.randint(600, 1500) if heavy else rng.randint(5, 900)
                answer = start + timedelta(seconds=4)
                end = answer + timedelta(seconds=billsec)
                lines.append(
                    f"{cdr_id},sw1,13800138000,{number},01088886666,{caller_area},010,{stamp},"
                    f"{answer.isoformat()},{end.isoformat()},{billsec},ANSWERED"
                )
    lines.sort(key=lambda line: line.split(",")[7])  # the switch writes them in time order
    return lines


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def _plans(folder: Path, wrong: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for plan_id, text in PLANS.items():
        if wrong:
            old, new = WRONG[plan_id]
            assert old in text
            text = text.replace(old, new)
        (folder / f"{plan_id}.toml").write_text(text)
    return folder


def _units(text: str) -> int:
    return parse_money(text, signed=True)


def _cli(pipeline: Pipeline, *args: str, ok: bool = True):
    result = CliRunner().invoke(app, list(args), env=pipeline.cli_env())
    if ok:
        assert result.exit_code == 0, f"cdrflow {' '.join(args)}: {result.output}"
    return result


def _rerate(pipeline: Pipeline, *args: str) -> dict:
    result = _cli(pipeline, "rerate", "--accounts", "A1,A2,A3", "--from", "2026-03-01", "--to", "2026-03-31",
                  *args, "--json")
    return json.loads(result.stdout)


def _offline(tmp_path: Path, name: str, plans: Path, accounts: Path, *files: Path) -> Path:
    lines = [line for file in files for line in file.read_text().splitlines()[1:]]
    combined = _write(tmp_path / f"{name}.csv", lines)
    out = tmp_path / name
    rate_file(combined, Catalog.from_tariffs(load_tariffs(plans, accounts)), out)
    return out


def _log_end(pipeline: Pipeline) -> int:
    consumer = KafkaConsumer(bootstrap_servers=pipeline.settings.kafka_servers())
    try:
        partitions = [TopicPartition(pipeline.topic("cdr.raw"), p) for p in range(pipeline.settings.topic_partitions)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def test_a_month_with_a_wrong_rate_corrected_through_a_kill_equals_the_right_run(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(ACCOUNTS)
    wrong, right = _plans(tmp_path / "wrong", wrong=True), _plans(tmp_path / "right", wrong=False)
    publish_tariffs(pipeline.settings, load_tariffs(wrong, accounts), accounts, topic_prefix=pipeline.prefix)
    first = _write(tmp_path / "march-1.csv", _traffic(7, datetime(2026, 3, 1, tzinfo=CST), 20, "m"))
    rest = _write(tmp_path / "march-2.csv", _traffic(8, datetime(2026, 3, 21, tzinfo=CST), 16, "n"))
    lines = len(first.read_text().splitlines()) - 1
    pipeline.start_worker()
    tariffs = read_catalog(pipeline.settings, topic_prefix=pipeline.prefix)
    pipeline.produce(pipeline.cdr_messages(first, tariffs, "march-1"))
    pipeline.wait_until(lambda c: c["rated_calls"] >= lines, timeout_s=120, what="the first 20 days rated")

    # The dry run, with the fixed plans from their folder: exactly the difference of two
    # offline runs of the same days, and nothing written.
    end_before = _log_end(pipeline)
    dry = _rerate(pipeline, "--plans", str(right), "--dry-run", "--out", str(tmp_path / "diff"))
    assert _log_end(pipeline) == end_before
    billed = {(r["account_id"], r["cdr_id"]): r for r in read_csv_rows(_offline(tmp_path, "billed", wrong, accounts, first) / "rated.csv")}
    truth = {(r["account_id"], r["cdr_id"]): r for r in read_csv_rows(_offline(tmp_path, "truth1", right, accounts, first) / "rated.csv")}
    expected = {
        key: (_units(billed[key]["amount"]), _units(truth[key]["amount"]))
        for key in truth
        if any(billed[key][c] != truth[key][c] for c in ("amount", "base", "cap_waived", "minimum_uplift", "tier_first"))
    }
    got = {(c["account_id"], c["cdr_id"]): (_units(c["old_amount"]), _units(c["new_amount"])) for c in dry["calls"]}
    assert got == expected and len(got) > 100
    for account in ("A1", "A2", "A3"):
        delta = sum(new - old for (a, _), (old, new) in expected.items() if a == account)
        balance = next(b for b in dry["balances"] if b["account_id"] == account)
        assert _units(balance["delta"]) == -delta
    assert {c["account_id"] for c in dry["calls"]} == {"A1", "A2", "A3"}
    assert {row["change"] for row in dry["alerts"]} >= {"appear", "vanish"}
    assert (tmp_path / "diff" / "calls.csv").read_text().count("\n") == len(got) + 1
    assert dry["problems"] == []

    # The plans are fixed where the worker reads them, then the correction is applied; the
    # worker is killed (SIGKILL) as the correction messages reach the log, and restarted.
    publish_tariffs(pipeline.settings, load_tariffs(right, accounts), accounts, topic_prefix=pipeline.prefix)
    apply = subprocess.Popen(
        [str(CDRFLOW), "rerate", "--accounts", "A1,A2,A3", "--from", "2026-03-01", "--to", "2026-03-31", "--apply",
         "--at", "2026-03-21T00:00:00+08:00", "--json"],
        env=pipeline.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while _log_end(pipeline) == end_before:
        assert apply.poll() is None, apply.communicate()
        assert time.monotonic() < deadline, "the correction was not published"
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))
    pipeline.workers[-1].kill()
    pipeline.start_worker()
    out, err = apply.communicate(timeout=240)
    assert apply.returncode == 0, err
    applied = json.loads(out)["applied"]
    assert applied["refused"] == [] and applied["applied"] == applied["messages"] >= 3

    # The rest of March and the first days of April, rated with the fixed plans.
    pipeline.produce(pipeline.cdr_messages(rest, tariffs, "march-2"))
    total = lines + len(rest.read_text().splitlines()) - 1
    pipeline.wait_until(lambda c: c["rated_calls"] >= total, timeout_s=120, what="the rest landed")
    time.sleep(2.0)  # alerts and balances land through their own sinks

    offline = _offline(tmp_path, "truth", right, accounts, first, rest)
    export = pipeline.export(tmp_path / "export")
    compared = compare_outputs(offline, export)
    assert compared.ok, compared.report()
    final = {}
    for row in read_csv_rows(offline / "rated.csv"):
        final[row["account_id"]] = _units(row["balance"])
    balances = pipeline.client().execute(
        "SELECT account_id, argMax(balance, version) FROM account_balances GROUP BY account_id ORDER BY account_id"
    )
    assert {a: int(b) for a, b in balances} == final

    # Again: nothing differs, nothing is published.
    end = _log_end(pipeline)
    again = _rerate(pipeline, "--apply")
    assert again["calls"] == [] and again["applied"]["messages"] == 0 and _log_end(pipeline) == end

    # Finance: the March statement has the calls as billed and the correction as a line of
    # March (applied on the 21st), and closes at the ledger's balance; revenue as corrected
    # is the right run's, as billed the first ratings'.
    db = pipeline.client()
    for account in ("A1", "A2", "A3"):
        statement = json.loads(_cli(pipeline, "report", "statement", "--account", account, "--month", "2026-03",
                                    "--format", "json").stdout)
        correction = [line for line in statement["lines"] if line["kind"] == "corrections"]
        assert len(correction) == 1 and correction[0]["calls_month"] == "2026-03"
        march = [r for r in read_csv_rows(offline / "rated.csv")
                 if r["account_id"] == account and r["local_day"].startswith("2026-03")]
        assert _units(statement["closing_balance"]) == _units(march[-1]["balance"])
        assert sum(_units(line["amount"]) for line in statement["lines"]) == (
            _units(statement["closing_balance"]) - _units(statement["opening_balance"]))
    history = db.execute("SELECT count() FROM rated_call_versions FINAL WHERE version = 0")[0][0]
    assert history == len(got)
    corrected = json.loads(_cli(pipeline, "report", "revenue", "--from", "2026-03-01", "--to", "2026-03-20",
                                "--by", "account", "--format", "json").stdout)
    as_billed = json.loads(_cli(pipeline, "report", "revenue", "--from", "2026-03-01", "--to", "2026-03-20",
                                "--by", "account", "--as", "billed", "--format", "json").stdout)
    for rows, run in ((corrected, truth), (as_billed, billed)):
        for row in rows:
            amounts = [_units(r["amount"]) for (a, _), r in run.items() if a == row["account"] and r["status"] == "rated"]
            assert _units(row["amount"]) == sum(amounts), (row, len(amounts))
    _a_late_call_is_rated_by_a_correction_of_its_period(pipeline, tmp_path, tariffs, total)


def _a_late_call_is_rated_by_a_correction_of_its_period(pipeline: Pipeline, tmp_path: Path, tariffs, landed: int) -> None:
    # A3's switch sends a call of 28 March after one of May: rejected late (horizon 1).
    late = _write(tmp_path / "late.csv", [
        "may-1,sw1,13800138000,4001300003,01088886666,010,010,2026-05-02T10:00:00+08:00,"
        "2026-05-02T10:00:04+08:00,2026-05-02T10:02:04+08:00,120,ANSWERED",
        "late-1,sw1,13800138000,4001300003,01088886666,010,010,2026-03-28T10:00:00+08:00,"
        "2026-03-28T10:00:04+08:00,2026-03-28T10:05:04+08:00,300,ANSWERED",
    ])
    pipeline.produce(pipeline.cdr_messages(late, tariffs, "late"))
    pipeline.wait_until(lambda c: c["rated_calls"] + c["rejected_cdrs"] >= landed + 2, timeout_s=120, what="late")
    db = pipeline.client()
    assert db.execute("SELECT cdr_id, reason FROM rejected_cdrs FINAL WHERE account_id = 'A3'") == [("late-1", "late")]
    before = db.execute("SELECT argMax(balance, version) FROM account_balances WHERE account_id = 'A3'")[0][0]

    done = json.loads(_cli(pipeline, "rerate", "--accounts", "A3", "--from", "2026-03-28", "--to", "2026-03-28",
                           "--apply", "--json").stdout)
    # 5 minutes of local calls on std: 0.15 a minute past A3's 200 first minutes of March.
    [call] = done["calls"]
    assert (call["cdr_id"], call["old_amount"], call["old_status"], call["in_period"]) == ("late-1", "0.0000", "late", True)
    amount = _units(call["new_amount"])
    assert amount > 0 and done["applied"]["applied"] == 1
    export = pipeline.export(tmp_path / "export-late")
    assert [r["cdr_id"] for r in read_csv_rows(export / "rated.csv") if r["cdr_id"] == "late-1"] == ["late-1"]
    assert [r for r in read_csv_rows(export / "rejected.csv") if r["cdr_id"] == "late-1"] == []
    after = db.execute("SELECT argMax(balance, version) FROM account_balances WHERE account_id = 'A3'")[0][0]
    assert after == before - amount
