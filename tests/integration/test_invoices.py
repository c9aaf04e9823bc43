"""Issue 24, done when: monthly invoices with VAT, numbered once, on the real broker and ClickHouse.

Every command goes through the ``cdrflow`` CLI and every call through a real worker. The
issue's scenario, computed by hand (CNY): an account opened on 2026-03-01 on a plan with
rent 109.00, the recording service at 10.60 a month (value-added) and one call of 100
minutes at 0.109 a minute; after ``close-month 2026-03`` its invoice is

    rent        109.00   9%   9.00   100.00
    recording    10.60   6%   0.60    10.00
    calls        10.90   9%   0.90    10.00
    total       130.50       10.50   120.00

with the same number when asked twice; a rerate at 0.10 a minute after that gives a credit
note of -0.90 (VAT -0.07: 0.90 x 9/109 = 0.0743) referring to it. Then the numbering:
two CLI calls at once for one invoice get one number, calls for other accounts at the same
time get the next ones, and a number requested by a run that died before issuing its
invoice is issued by the next run: no gap, no reuse.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from schemas.invoices import document_id, document_json
from streams.catalog.publish import publish_tariffs, read_catalog
from streams.ledger import invoices
from streams.ledger.invoice_numbers import NumberRequest, allocate, requests_of
from tariffs import load_tariffs
from tests.conftest import CDRFLOW
from tests.integration.pipeline import Pipeline
from tests.integration.test_finance import _png_is_not_blank
from tests.integration.test_package_scenario import _line, _send
from tests.integration.test_rerate import _cli

pytestmark = pytest.mark.integration

PLAN = """
id = "vat"
timezone = "Asia/Shanghai"

[[versions]]
effective_from = 2026-01-01T00:00:00+08:00
monthly_rent = "109.00"
services = { recording = "10.60" }
increment = { first = 60, next = 60 }

[[versions.rates]]
segment = "*"
class = "*"
tiers = [{ per_minute = "0.109" }]
"""
NUMBER = "4006135792"  # grade C: no selection fee


def _load(pipeline: Pipeline, tmp_path: Path, plan: str = PLAN) -> None:
    plans = tmp_path / "plans"
    plans.mkdir(exist_ok=True)
    (plans / "vat.toml").write_text(plan)
    (tmp_path / "accounts.toml").write_text("")
    publish_tariffs(pipeline.settings, load_tariffs(plans, tmp_path / "accounts.toml"), tmp_path / "accounts.toml",
                    topic_prefix=pipeline.prefix)


def _json(pipeline: Pipeline, *args: str) -> dict:
    return json.loads(_cli(pipeline, *args, "--json").stdout)


def _lines(document: dict) -> list[tuple[str, str, str, str, str, str]]:
    return [(line["kind"], line["item"], line["rate"], line["gross"], line["tax"], line["net"])
            for line in document["lines"]]


def _landed_calls(pipeline: Pipeline, count: int) -> None:
    pipeline.wait_until(lambda c: c["rated_calls"] >= count, timeout_s=120, what="calls landed")


def test_the_issue_scenario_an_invoice_of_130_50_asked_twice_then_a_credit_note(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    _load(pipeline, tmp_path)
    pipeline.start_worker()
    cli = lambda *args, ok=True: _cli(pipeline, *args, ok=ok)  # noqa: E731
    cli("account", "open", "--id", "INV", "--plan", "vat", "--numbers", NUMBER, "--opening-balance", "500.00",
        "--at", "2026-03-01T00:00:00+08:00")
    cli("account", "services", "INV", "--enable", "recording", "--at", "2026-03-01T00:00:00+08:00")
    _send(pipeline, tmp_path, "march.csv", [_line("c1", NUMBER, "2026-03-12T10:00:00+08:00", 6000, "13800138000", "010")])
    _landed_calls(pipeline, 1)

    # March is open: a draft, marked as such, with no number, and nothing written.
    draft = _json(pipeline, "invoice", "INV", "--month", "2026-03")
    assert (draft["invoice_no"], draft["status"], draft["draft"]) == (None, "draft", True)
    assert _lines(draft) == [("calls", "local", "0.09", "10.90", "0.90", "10.00")]
    shown = cli("invoice", "INV", "--month", "2026-03").output
    assert "DRAFT" in shown and "no number" in shown
    db = pipeline.client()
    assert db.execute("SELECT count() FROM billing_events WHERE kind = 'InvoiceIssued'") == [(0,)]
    assert requests_of(allocate(pipeline.prefixed_settings(), []), "cdrflow") == []

    cli("close-month", "2026-03", "--at", "2026-04-01T00:00:00+08:00")
    # What ClickHouse says the invoice will hold is what the fold's book then freezes.
    settings = pipeline.prefixed_settings()
    preview = invoices.draft(db, read_catalog(settings, topic_prefix=pipeline.prefix), invoices.tax_table(settings),
                             "INV", "2026-03")
    out = tmp_path / "invoices"
    first = _json(pipeline, "invoice", "INV", "--month", "2026-03", "--at", "2026-04-03T10:00:00+08:00",
                  "--out", str(out))
    assert (first["invoice_no"], first["status"], first["account_id"], first["month"]) == (
        "CDF00000001", "issued", "INV", "2026-03")
    assert first["issued_now"] is True and first["issued_at"] == "2026-04-03T10:00:00+08:00"
    assert _lines(first) == [
        ("calls", "local", "0.09", "10.90", "0.90", "10.00"),
        ("rent", "", "0.09", "109.00", "9.00", "100.00"),
        ("service", "recording", "0.06", "10.60", "0.60", "10.00"),
    ]
    assert first["totals"] == {"gross": "130.50", "tax": "10.50", "net": "120.00"}
    assert [(v["rate"], v["gross"], v["tax"]) for v in first["vat"]] == [("0.09", "119.90", "9.90"),
                                                                          ("0.06", "10.60", "0.60")]
    assert first["seller"]["id"] == "cdrflow" and first["buyer"]["numbers"] == [NUMBER]
    assert document_json(preview)["lines"] == first["lines"] and document_json(preview)["memo"] == first["memo"]

    # Asked again: the same invoice, the same number, nothing issued.
    again = _json(pipeline, "invoice", "INV", "--month", "2026-03")
    assert again["issued_now"] is False
    assert {**again, "issued_now": True} == first
    assert db.execute("SELECT count() FROM billing_events FINAL WHERE kind = 'InvoiceIssued'") == [(1,)]
    # --out wrote the JSON and the printable page
    assert json.loads((out / "CDF00000001.json").read_text())["totals"]["gross"] == "130.50"
    page = (out / "CDF00000001.html").read_text()
    assert "CDF00000001" in page and "130.50" in page and "10.50" in page and "DRAFT" not in page
    # finance's tables
    assert db.execute("SELECT invoice_no, kind, gross, tax, net, line_count FROM invoices FINAL") == [
        ("CDF00000001", "invoice", 1_305_000, 105_000, 1_200_000, 3)]

    # The call should have been 0.10 a minute: a rerate after the invoice gives a credit note.
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    (fixed / "vat.toml").write_text(PLAN.replace('"0.109"', '"0.10"'))
    applied = _json(pipeline, "rerate", "--accounts", "INV", "--from", "2026-03-01", "--to", "2026-03-31",
                    "--plans", str(fixed), "--apply", "--at", "2026-04-05T10:00:00+08:00")
    [note] = applied["applied"]["credit_notes"]
    assert (note["invoice_no"], note["kind"], note["corrects"], note["corrects_month"], note["month"]) == (
        "CDF00000002", "credit_note", "CDF00000001", "2026-03", "2026-04")
    assert note["totals"] == {"gross": "-0.90", "tax": "-0.07", "net": "-0.83"}
    shown = _json(pipeline, "invoice", "INV", "--month", "2026-03")
    assert [n["invoice_no"] for n in shown["credit_notes"]] == ["CDF00000002"]
    assert {**shown, "credit_notes": [], "issued_now": True} == {**first, "credit_notes": []}  # the invoice stays

    # A fault of 5 hours from 20 March 21:00, credited after the invoice: a day's rent back,
    # 109.00 / 31 = 3.5161 -> 3.52, VAT 0.29 (3.52 x 9/109 = 0.2906): a second credit note.
    sla = _json(pipeline, "sla-credit", "INV", "--start", "2026-03-20T21:00:00+08:00", "--end",
                "2026-03-21T02:00:00+08:00", "--at", "2026-04-06T10:00:00+08:00")[0]
    [note] = sla["credit_notes"]
    assert (note["invoice_no"], note["corrects"], note["month"], note["totals"]) == (
        "CDF00000003", "CDF00000001", "2026-04", {"gross": "-3.52", "tax": "-0.29", "net": "-3.23"})

    # The tax return of April: the invoice and its credit notes, per rate.
    report = json.loads(_cli(pipeline, "report", "tax", "--from", "2026-04-01", "--to", "2026-04-30",
                             "--format", "json").stdout)
    assert [(r["month"], r["rate"], r["documents"], r["gross"], r["tax"], r["net"]) for r in report] == [
        ("2026-04", "0.09", 3, "115.4800", "9.5400", "105.9400"),  # 119.90 - 0.90 - 3.52
        ("2026-04", "0.06", 1, "10.6000", "0.6000", "10.0000"),
    ]
    page = tmp_path / "april.html"
    _cli(pipeline, "report", "html", "--month", "2026-04", "--out", str(page))
    panel = page.read_text().split('id="vat"', 1)[1]
    assert "<td>0.09</td><td>3</td><td>115.4800</td><td>9.5400</td><td>105.9400</td>" in panel

    # The documents ride on their events: a rebuild of ClickHouse from the log gives them back.
    pipeline.stop_workers()
    snapshot = {table: db.execute(f"SELECT * FROM {table} FINAL ORDER BY invoice_no{', line' if 'lines' in table else ''}")
                for table in ("invoices", "invoice_lines")}
    assert len(snapshot["invoice_lines"]) == 5
    cli("rebuild")
    assert {table: db.execute(f"SELECT * FROM {table} FINAL ORDER BY invoice_no{', line' if 'lines' in table else ''}")
            for table in snapshot} == snapshot


def _invoice_process(pipeline: Pipeline, account: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CDRFLOW), "invoice", account, "--month", "2026-03", "--json"], capture_output=True,
                          text=True, env=pipeline.cli_env(), timeout=300)


def test_numbers_hold_through_two_calls_at_once_and_a_run_that_died(pipeline: Pipeline, tmp_path: Path) -> None:
    _load(pipeline, tmp_path)
    pipeline.start_worker()
    accounts = {"A": "4006135701", "B": "4006135702", "C": "4006135703", "D": "4006135704", "E": "4006135705"}
    for account, number in accounts.items():
        _cli(pipeline, "account", "open", "--id", account, "--plan", "vat", "--numbers", number,
             "--opening-balance", "500.00", "--at", "2026-03-01T00:00:00+08:00")
    # F, opened in February: its February is closed and never invoiced on its own
    _cli(pipeline, "account", "open", "--id", "F", "--plan", "vat", "--numbers", "4006135706",
         "--opening-balance", "500.00", "--at", "2026-02-01T00:00:00+08:00")
    _cli(pipeline, "close-month", "2026-02", "--at", "2026-03-01T00:00:00+08:00")
    _cli(pipeline, "close-month", "2026-03", "--at", "2026-04-01T00:00:00+08:00")

    # Four processes at once: two for A's invoice, one for B's, one for C's.
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda account: _invoice_process(pipeline, account), ["A", "A", "B", "C"]))
    assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
    numbers = [json.loads(d.stdout)["invoice_no"] for d in done]
    assert numbers[0] == numbers[1]  # one invoice, one number
    assert sorted(set(numbers)) == ["CDF00000001", "CDF00000002", "CDF00000003"]  # no gap, no reuse
    assert sum(json.loads(d.stdout)["issued_now"] for d in done[:2]) <= 1

    # A run that died after its number was requested, before the invoice was issued: D's
    # request is on the sequence (number 4), no InvoiceIssued yet.
    settings = pipeline.prefixed_settings()
    numbered = allocate(settings, [NumberRequest("cdrflow", document_id("D", month="2026-03"), "D", "invoice",
                                                 "2026-03")])
    assert numbered[("cdrflow", "invoice/D/2026-03")][0] == 4
    db = pipeline.client()
    assert db.execute("SELECT count() FROM billing_events WHERE account_id = 'D' AND kind = 'InvoiceIssued'") == [(0,)]
    # The next run (for E) issues E's with 5, and D's with the 4 it was given.
    e = json.loads(_invoice_process(pipeline, "E").stdout)
    assert e["invoice_no"] == "CDF00000005"
    d = json.loads(_invoice_process(pipeline, "D").stdout)
    assert (d["invoice_no"], d["issued_now"]) == ("CDF00000004", False)
    issued = sorted(r[0] for r in db.execute("SELECT reference FROM billing_events FINAL WHERE kind = 'InvoiceIssued'"))
    assert issued == [f"CDF0000000{n}" for n in range(1, 6)]

    # --all issues F's March invoice (6), which takes its February too; the others are
    # shown as they were issued, and no number is asked for them.
    everyone = json.loads(_cli(pipeline, "invoice", "--all", "--month", "2026-03", "--json").stdout)
    by_account = {doc["account_id"]: doc for doc in everyone["documents"]}
    assert sorted(doc["invoice_no"] for doc in everyone["documents"]) == [*issued, "CDF00000006"]
    assert [a for a, doc in by_account.items() if doc["issued_now"]] == ["F"]
    assert [(line["month"], line["kind"], line["gross"]) for line in by_account["F"]["lines"]] == [
        ("2026-02", "rent", "109.00"), ("2026-03", "rent", "109.00")]
    before = len(requests_of(allocate(settings, []), "cdrflow"))
    again = json.loads(_cli(pipeline, "invoice", "--all", "--month", "2026-03", "--json").stdout)
    assert not any(doc["issued_now"] for doc in again["documents"])
    assert len(requests_of(allocate(settings, []), "cdrflow")) == before == 6
    # F's February, once its March is invoiced, is refused: its charges are on that invoice
    refused = _cli(pipeline, "invoice", "F", "--month", "2026-02", ok=False)
    assert refused.exit_code == 3 and "CDF00000006" in refused.output and "nothing was written" in refused.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is installed by make setup")
def test_the_invoice_page_renders_in_headless_chromium(pipeline: Pipeline, tmp_path: Path) -> None:
    _load(pipeline, tmp_path)
    pipeline.start_worker()
    _cli(pipeline, "account", "open", "--id", "P", "--plan", "vat", "--numbers", NUMBER, "--opening-balance", "500.00",
         "--at", "2026-03-01T00:00:00+08:00")
    _cli(pipeline, "close-month", "2026-03", "--at", "2026-04-01T00:00:00+08:00")
    out = tmp_path / "pages"
    _cli(pipeline, "invoice", "P", "--month", "2026-03", "--out", str(out))
    page = out / "CDF00000001.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1000,1400"]
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180)
    assert shot.is_file() and _png_is_not_blank(shot.read_bytes())
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert 'id="invoice-no">CDF00000001<' in dom.stdout
    assert 'id="total">109.00<' in dom.stdout  # rent alone: no call, no service
    assert dom.stdout.count("<tr>") >= 4  # the lines' header, a line, the VAT summary's header, a rate
