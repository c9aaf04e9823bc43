"""Issue 25's rules on the real broker and ClickHouse: the unusual-bill alert, the arrears
lifecycle, number transfer, tariff notice.

Ledger commands go through the ``cdrflow`` CLI (typer's runner, this test's topics and
database), calls through ingest's library call (the feeds' routing: ``cdrflow ingest``
does not take a topic prefix) and a real worker; figures are worked out by hand in the
comments (CNY; plan ``op``: 1.00 a started minute for every caller, frozen 30 days and
numbers released 60 days after a suspension).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from schemas.cdr_csv import parse_csv
from schemas.messages import cdr_chunk_value
from streams.catalog.publish import publish_tariffs
from streams.cli.main import app
from streams.feeds.ingest import ingest_paths
from streams.kafka.client import encode_json, read_to_end
from tariffs import load_tariffs
from tests.integration.pipeline import Pipeline, WebhookReceiver
from tests.integration.test_ledger_scenario import HEADER, _balances, _cny


def _version(effective_from: str, per_minute: str, extra: str = "") -> str:
    """One version of plan ``op`` (frozen 30 days, released 60 days after a suspension)."""
    return f"""
[[versions]]
effective_from = {effective_from}
{extra}frozen_after_days = 30
reclaim_after_days = 60
increment = {{ first = 60, next = 60 }}

[[versions.rates]]
segment = "*"
class = "*"
tiers = [{{ per_minute = "{per_minute}" }}]
"""


def _account(id_: str, number: str, opening_balance: str, extra: str = "") -> str:
    return f"""
[[accounts]]
id = "{id_}"
plan = "op"
numbers = [{number}]
opening_balance = "{opening_balance}"
{extra}opened_at = 2026-01-01T00:00:00+08:00
"""


PLAN = 'id = "op"\ntimezone = "Asia/Shanghai"\n' + _version(
    "2026-01-01T00:00:00+08:00", "1.00", "valid_until = 2026-05-01T00:00:00+08:00\n"
)
# A second version published 10 days before it takes effect: short notice (30 days).
SHORT_NOTICE = _version(
    "2026-06-01T00:00:00+08:00",
    "1.20",
    'published_at = 2026-05-22T00:00:00+08:00\ndescription = "1.20 a minute from June"\n',
)
BIG, MOVED, KEPT, TAKER, DEBT = "4006135792", "4007246813", "4007259361", "4006310975", "4006428517"  # grade C
LOW = 'low_balance_threshold = "1.00"\n'
ACCOUNTS = "".join([
    _account("BIG", f'"{BIG}"', "2000.00"),
    _account("OLD", f'"{MOVED}", "{KEPT}"', "10.00", LOW),
    _account("NEW", f'"{TAKER}"', "100.00"),
    _account("DEBT", f'"{DEBT}"', "5.00", LOW),
])


def _call(cdr_id: str, called: str, answered: str, minutes: int) -> str:
    at = datetime.fromisoformat(answered)
    stamp = lambda t: t.isoformat()  # noqa: E731
    return ",".join([cdr_id, "sw1", "13800138000", called, "01088886666", "010", "010",
                     stamp(at - timedelta(seconds=5)), stamp(at), stamp(at + timedelta(minutes=minutes)),
                     str(minutes * 60), "ANSWERED"])


class _Scenario:
    def __init__(self, pipeline: Pipeline, tmp_path: Path) -> None:
        self.pipeline = pipeline
        self.tmp_path = tmp_path
        self.env = pipeline.cli_env()
        self.lines = 0

    def cli(self, *args: str, ok: bool = True):  # type: ignore[no-untyped-def]
        result = CliRunner().invoke(app, list(args), env=self.env)
        if ok:
            assert result.exit_code == 0, f"cdrflow {' '.join(args)}: {result.output}"
        return result

    def ingest(self, name: str, *lines: str) -> None:
        """Ingest a file (routed by the feeds), then wait until every line landed."""
        path = self.tmp_path / name
        path.write_text("\n".join([HEADER, *lines]) + "\n")
        ingest_paths(self.pipeline.settings, [path], topic_prefix=self.pipeline.prefix)
        self.lines += len(lines)
        self.landed()

    def landed(self) -> None:
        self.pipeline.wait_until(lambda c: c["rated_calls"] + c["rejected_cdrs"] >= self.lines, timeout_s=120,
                                 what="calls landed")
        time.sleep(1.5)  # the balance rows land through their own sink

    def close(self, month: str, at: str) -> None:
        self.cli("close-month", month, "--at", at)

    def show(self, account: str) -> dict:
        return json.loads(self.cli("account", "show", account, "--json").stdout)

    def query(self, sql: str) -> list[tuple]:
        return self.pipeline.client().execute(sql)


def test_the_rules_a_400_operator_must_keep(pipeline: Pipeline, tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "op.toml").write_text(PLAN)
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(ACCOUNTS)
    receiver = WebhookReceiver()
    run = _Scenario(pipeline, tmp_path)
    try:
        publish_tariffs(pipeline.settings, load_tariffs(plans, accounts), accounts, topic_prefix=pipeline.prefix)
        pipeline.start_worker(env={"CDRFLOW_ALERT_WEBHOOK": receiver.url})

        # January to March: BIG's calls of about 100.00 a month (98, 100, 102 minutes),
        # each month closed. DEBT's 6 minutes take its 5.00 to -1.00 on 20 January 10:00:
        # suspended, frozen 30 days later (19 February 10:00), its number released 60
        # days later (21 March 10:00). OLD's 15 minutes in March: 10.00 -> -5.00.
        run.ingest("january.csv", _call("b-01", BIG, "2026-01-10T10:00:00+08:00", 98),
                   _call("d-01", DEBT, "2026-01-20T10:00:00+08:00", 6))
        run.close("2026-01", "2026-02-01T01:00:00+08:00")
        debt = run.show("DEBT")
        assert (debt["state"], debt["next_step"], debt["next_step_at"]) == (
            "suspended", "frozen", "2026-02-19T10:00:00+08:00")
        run.ingest("february.csv", _call("b-02", BIG, "2026-02-10T10:00:00+08:00", 100))
        run.close("2026-02", "2026-03-01T01:00:00+08:00")
        debt = run.show("DEBT")
        assert (debt["state"], debt["next_step"], debt["next_step_at"]) == (
            "frozen", "released", "2026-03-21T10:00:00+08:00")
        run.ingest("march.csv", _call("b-03", BIG, "2026-03-10T10:00:00+08:00", 102),
                   _call("o-01", MOVED, "2026-03-12T10:00:00+08:00", 15))
        run.close("2026-03", "2026-04-01T01:00:00+08:00")
        debt = run.show("DEBT")
        assert (debt["state"], debt["next_step"], debt["balance"]) == ("closed", None, "-1.0000")
        lifecycle = run.query(
            "SELECT kind, effective_time FROM billing_events FINAL WHERE account_id = 'DEBT' "
            "AND kind IN ('AccountSuspended', 'NumberFrozen', 'NumberReleased', 'AccountClosed') ORDER BY effective_time, kind")
        assert [(kind, at.isoformat()) for kind, at in lifecycle] == [
            ("AccountSuspended", "2026-01-20T02:00:00+00:00"), ("NumberFrozen", "2026-02-19T02:00:00+00:00"),
            ("AccountClosed", "2026-03-21T02:00:00+00:00"), ("NumberReleased", "2026-03-21T02:00:00+00:00")]
        statuses = {r.key.decode(): json.loads(r.value)["status"]
                    for r in read_to_end(pipeline.prefixed_settings(), pipeline.topic("number.status"))}
        assert statuses[DEBT] == "released"
        # Calls still sent to DEBT's number: frozen on 25 February, released on 25 March.
        run.ingest("debt-late.csv", _call("d-02", DEBT, "2026-02-25T10:00:00+08:00", 1),
                   _call("d-03", DEBT, "2026-03-25T10:00:00+08:00", 1))
        assert sorted(run.query("SELECT cdr_id, reason FROM rejected_cdrs FINAL WHERE cdr_id LIKE 'd-%'")) == [
            ("d-02", "account_inactive"), ("d-03", "unknown_number")]

        # April: BIG's 300 and 150 minutes (450.00, not above 5 x 100.00), then 60 (510.00:
        # unusual_spend, once), then 100 more (no second alert). 2000 - 300 - 510 = 1190.00.
        run.ingest("april.csv", _call("a-1", BIG, "2026-04-02T10:00:00+08:00", 300),
                   _call("a-2", BIG, "2026-04-03T10:00:00+08:00", 150),
                   _call("a-3", BIG, "2026-04-04T10:00:00+08:00", 60),
                   _call("a-4", BIG, "2026-04-05T10:00:00+08:00", 100))
        unusual = run.query("SELECT account_id, cdr_id, balance FROM alerts FINAL WHERE kind = 'unusual_spend'")
        assert unusual == [("BIG", "a-3", _cny("1190.00"))]
        deadline = time.monotonic() + 30
        while not [b for _, b in receiver.requests if b["kind"] == "unusual_spend"] and time.monotonic() < deadline:
            time.sleep(0.5)
        posted = [b for _, b in receiver.requests if b["kind"] == "unusual_spend"]
        assert [(b["account_id"], b["cdr_id"]) for b in posted] == [("BIG", "a-3")]

        # Transfer of MOVED from OLD to NEW on 15 April: refused while OLD owes 5.00, done
        # once it paid 20.00 (balance 15.00).
        refused = run.cli("number", "transfer", MOVED, "--to", "NEW", "--at", "2026-04-15T00:00:00+08:00", ok=False)
        assert refused.exit_code != 0 and "owes 5.0000" in refused.output, refused.output
        run.cli("account", "topup", "OLD", "20.00", "--ref", "PAY-OLD-1", "--at", "2026-04-10T09:00:00+08:00")
        moved = json.loads(run.cli("number", "transfer", MOVED, "--to", "NEW", "--at", "2026-04-15T00:00:00+08:00",
                                   "--json").stdout)
        assert [(r["account_id"], [e["kind"] for e in r["events"]]) for r in moved] == [
            ("OLD", ["NumberTransferred"]), ("NEW", ["NumberTransferred"])]
        again = run.cli("number", "transfer", MOVED, "--to", "NEW", "--at", "2026-04-15T00:00:00+08:00", ok=False)
        assert again.exit_code != 0 and "account NEW's already" in again.output
        # Calls: the 14th (OLD's), the 16th (NEW's), a late one of the 10th sent last (OLD's).
        run.ingest("transfer.csv", _call("t-1", MOVED, "2026-04-14T10:00:00+08:00", 2),
                   _call("t-2", MOVED, "2026-04-16T10:00:00+08:00", 3),
                   _call("t-3", MOVED, "2026-04-10T10:00:00+08:00", 1))
        # A call of the 17th routed to OLD's log (a feed that had not read the transfer yet):
        # OLD's worker forwards it to NEW's log.
        stray = tmp_path / "stray.csv"
        stray.write_text("\n".join([HEADER, _call("t-4", MOVED, "2026-04-17T10:00:00+08:00", 4)]) + "\n")
        pipeline.produce([(b"OLD", encode_json(cdr_chunk_value("stray.csv", parse_csv(stray.read_bytes()), "stray")))])
        run.lines += 1
        run.landed()
        billed = dict(run.query("SELECT cdr_id, account_id FROM rated_calls FINAL WHERE cdr_id LIKE 't-%'"))
        assert billed == {"t-1": "OLD", "t-2": "NEW", "t-3": "OLD", "t-4": "NEW"}
        balances = _balances(pipeline)
        assert balances["OLD"] == (_cny("12.00"), "active")  # 15.00 - 2 - 1
        assert balances["NEW"] == (_cny("93.00"), "active")  # 100.00 - 3 - 4
        transfers = json.loads(run.cli("report", "transfers", "--format", "json").stdout)
        assert transfers == [{"number": MOVED, "from": "OLD", "to": "NEW", "at": "2026-04-14T16:00:00+00:00",
                              "local_day": "2026-04-15", "status": "done"}]

        # Invoices (issue 24) name the numbers held in their month: April's of OLD and NEW
        # both name MOVED (the draft from ClickHouse as the issued one); DEBT, closed since
        # its number was reclaimed on 21 March, still gets its March invoice (its January
        # calls, 6.00), naming the number it had.
        draft = json.loads(run.cli("invoice", "OLD", "--month", "2026-04", "--json").stdout)
        assert (draft["draft"], draft["buyer"]["numbers"]) == (True, [MOVED, KEPT])
        run.close("2026-04", "2026-05-01T01:00:00+08:00")
        issued = {account: json.loads(run.cli("invoice", account, "--month", "2026-04", "--at",
                                              "2026-05-02T10:00:00+08:00", "--json").stdout)
                  for account in ("OLD", "NEW")}
        assert {a: (d["status"], d["buyer"]["numbers"]) for a, d in issued.items()} == {
            "OLD": ("issued", [MOVED, KEPT]), "NEW": ("issued", [TAKER, MOVED])}
        closed = json.loads(run.cli("invoice", "DEBT", "--month", "2026-03", "--at", "2026-05-02T10:00:00+08:00",
                                    "--json").stdout)
        assert (closed["status"], closed["buyer"]["numbers"], closed["totals"]["gross"]) == ("issued", [DEBT], "6.00")

        # The first version is on sale until 1 May: no account is opened on it after.
        late = run.cli("account", "open", "--id", "LATE", "--plan", "op", "--numbers", "4006537126",
                       "--opening-balance", "10.00", "--at", "2026-05-10T00:00:00+08:00", ok=False)
        assert late.exit_code != 0 and "not on sale since 2026-05-01" in late.output, late.output

        # Tariff notice: a version published 10 days before it takes effect.
        with (plans / "op.toml").open("a") as plan:
            plan.write(SHORT_NOTICE)
        short = run.cli("load", "--plans", str(plans), "--accounts", str(accounts), ok=False)
        assert short.exit_code == 2 and "short notice" in short.output, short.output
        notices = json.loads(run.cli("plans", "notices", "--plans", str(plans), "--accounts", str(accounts),
                                     "--days", "30", "--at", "2026-05-20T00:00:00+08:00", "--json").stdout)
        assert [(c["plan_id"], c["notice_days"], c["changed"]) for c in notices["changes"]] == [("op", 10, ["rates"])]
        run.cli("plans", "check", "--plans", str(plans), "--accounts", str(accounts), "--allow-short-notice")
    finally:
        receiver.close()
