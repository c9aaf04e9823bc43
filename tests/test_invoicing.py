"""Invoices with VAT in the ledger fold and the tax file (issue 24), without Kafka.

Amounts are worked out by hand in the comments (CNY); the fold counts units of 0.0001 CNY.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from rating import invoicing
from rating.ledger import Book, Credit, Terms, apply_command
from schemas.corrections import CallChange, Correction
from schemas.invoices import InvoiceDocument, InvoiceRequest, TaxTable, document_json
from schemas.ledger import LedgerCommand, LedgerEvent
from tariffs import Plan, TariffError
from tariffs.tax import load_tax_rates

CNY = 10_000
CST = timezone(timedelta(hours=8))
TABLE = load_tax_rates()


def plan(**version: Any) -> Plan:
    return Plan.model_validate(
        {"id": "p", "timezone": "Asia/Shanghai",
         "versions": [{"effective_from": "2014-01-01T00:00:00+08:00", **version}]}
    )


#: The issue's plan: rent 109.00, the recording service at 10.60 a month, 0.109 a minute.
SCENARIO = plan(monthly_rent="109.00", services={"recording": "10.60"},
                rates=[{"segment": "*", "class": "*", "tiers": [{"per_minute": "0.109"}]}])


class Account:
    """One account's book, balance and credit, folded command by command (tests/test_packages.py)."""

    def __init__(self, terms_plan: Plan) -> None:
        self.terms = Terms("A1", terms_plan, 0)
        self.book, self.balance, self.credit = Book(), 0, None
        self.events: list[LedgerEvent] = []
        self.offset = 0

    def run(self, kind: str, when: str, **fields: Any) -> str | None:
        self.offset += 1
        command = LedgerCommand(kind=kind, account_id="A1", at=datetime.fromisoformat(when), **fields)
        book, balance, out = apply_command(self.book, self.balance, command, self.terms, offset=self.offset,
                                           credit=self.credit)
        if out.refusal is None:
            self.book, self.balance, self.credit = book, balance, out.credit
            self.events = out.events
        return out.refusal

    def calls(self, month: str, units: int, calls: int = 1, seconds: int = 60, call_class: str = "local",
              credit_used: int = 0) -> None:
        """A round of rated calls, as the worker's fold records them (streams.worker.ledger_fold)."""
        invoicing.record_calls(self.book.billing, month, call_class, units - credit_used, calls, seconds, credit_used)
        self.balance -= units - credit_used

    def invoice(self, month: str, sequence: int, when: str = "2026-04-03T10:00:00+08:00") -> InvoiceDocument | None:
        request = InvoiceRequest(kind="invoice", sequence=sequence, month=month, table=TABLE)
        assert self.run("invoice", when, document=request) is None
        return _document(self.events)

    def note(self, source_offset: int, corrects: str, sequence: int,
             when: str = "2026-04-05T10:00:00+08:00") -> InvoiceDocument | None:
        request = InvoiceRequest(kind="note", sequence=sequence, source_offset=source_offset, corrects=corrects,
                                 table=TABLE)
        assert self.run("invoice", when, document=request) is None
        return _document(self.events)


def _document(events: list[LedgerEvent]) -> InvoiceDocument | None:
    issued = [e for e in events if e.document]
    assert len(issued) <= 1
    return InvoiceDocument.model_validate_json(issued[0].document) if issued else None


def _lines(document: InvoiceDocument) -> list[tuple[str, str, int, int, int]]:
    return [(line.kind, str(line.rate), line.gross, line.tax, line.net) for line in document.lines]


def scenario() -> Account:
    """The issue's account, opened 2026-03-01 with recording, one call of 100 minutes."""
    account = Account(SCENARIO)
    assert account.run("open", "2026-03-01T00:00:00+08:00", plan="p", numbers=["4008123456"],
                       opening_balance=500 * CNY) is None
    assert account.run("services", "2026-03-01T00:00:00+08:00", enable=["recording"]) is None
    account.calls("2026-03", 109_000, seconds=6000)  # 100 min x 0.109 = 10.90
    assert account.run("close_month", "2026-04-01T00:00:00+08:00", month="2026-03") is None
    return account


# ---------------------------------------------------------------------------- the issue's scenario


def test_the_invoice_of_the_issue_is_130_50_with_10_50_of_vat() -> None:
    account = scenario()
    document = account.invoice("2026-03", sequence=1)
    assert document is not None and document.invoice_no == "CDF00000001" and document.kind == "invoice"
    # rent 109.00 at 9%: 9.00; recording 10.60 at 6%: 0.60; calls 10.90 at 9%: 0.90
    assert _lines(document) == [
        ("calls", "0.09", 109_000, 9_000, 100_000),
        ("rent", "0.09", 1_090_000, 90_000, 1_000_000),
        ("service", "0.06", 106_000, 6_000, 100_000),
    ]
    shown = document_json(document)
    assert shown["totals"] == {"gross": "130.50", "tax": "10.50", "net": "120.00"}
    assert [(v["rate"], v["gross"], v["tax"], v["net"]) for v in shown["vat"]] == [
        ("0.09", "119.90", "9.90", "110.00"), ("0.06", "10.60", "0.60", "10.00")]
    assert document.lines[0].description == "local calls: 1 call, 100.00 min"
    assert (shown["invoice_no"], shown["account_id"], shown["month"], shown["draft"]) == (
        "CDF00000001", "A1", "2026-03", False)


def test_asking_again_issues_nothing_and_an_open_month_is_refused() -> None:
    account = scenario()
    assert account.invoice("2026-03", sequence=1) is not None
    assert account.invoice("2026-03", sequence=1) is None and account.events == []  # a repeat
    # April is not closed: the fold refuses (the CLI gives a draft and asks no number)
    request = InvoiceRequest(kind="invoice", sequence=2, month="2026-04", table=TABLE)
    assert "not closed" in (account.run("invoice", "2026-04-20T10:00:00+08:00", document=request) or "")


def test_a_call_of_an_invoiced_month_that_comes_late_is_on_the_next_invoice() -> None:
    account = scenario()
    account.invoice("2026-03", sequence=1)
    account.calls("2026-03", 21_800, seconds=1200)  # 20 min of 31 March, arriving after the invoice: 2.18
    account.calls("2026-04", 10_900, seconds=600)  # 10 min in April: 1.09
    assert account.run("close_month", "2026-05-01T00:00:00+08:00", month="2026-04") is None
    april = account.invoice("2026-04", sequence=2, when="2026-05-02T10:00:00+08:00")
    assert april is not None
    assert [(line.kind, line.month, line.gross) for line in april.lines] == [
        ("calls", "2026-03", 21_800), ("calls", "2026-04", 10_900), ("rent", "2026-04", 1_090_000),
        ("service", "2026-04", 106_000)]
    assert april.lines[0].description.endswith("(2026-03)")  # a late line says its month


def test_a_correction_after_the_invoice_gives_a_credit_note_referring_to_it() -> None:
    account = scenario()
    invoice = account.invoice("2026-03", sequence=1)
    assert invoice is not None
    # the 100-minute call was priced at 0.109 and should have been 0.10: 10.00, 0.90 back
    correction = Correction(
        correction_id="0123456789abcdef", based_on=0, period_from="2026-03-01", period_to="2026-03-31",
        calls=[CallChange(cdr_id="x1", local_day="2026-03-12", call_class="local", old_amount=109_000,
                          new_amount=100_000)],
        rows={"v": 1, "rows": {"cdr_id": ["x1"], "amount": [100_000]}},
    )
    assert account.run("rerate", "2026-04-04T10:00:00+08:00", correction=correction) is None
    source = account.offset  # the note is of what this command changed
    assert account.book.billing["notes"][f"{source}/CDF00000001"]["lines"] == {"2026-03|correction|0123456789abcdef": [-9_000, 1, 0]}
    note = account.note(source, "CDF00000001", sequence=2)
    assert note is not None and note.kind == "credit_note" and note.invoice_no == "CDF00000002"
    assert (note.corrects, note.corrects_month, note.month) == ("CDF00000001", "2026-03", "2026-04")
    # -0.90 of calls at 9%: tax -0.07 (0.0743 rounded), net -0.83
    assert _lines(note) == [("correction", "0.09", -9_000, -700, -8_300)]
    assert account.note(source, "CDF00000001", sequence=2) is None  # asked again: nothing
    # the invoice of April does not take the correction again
    assert account.run("close_month", "2026-05-01T00:00:00+08:00", month="2026-04") is None
    april = account.invoice("2026-04", sequence=3, when="2026-05-02T10:00:00+08:00")
    assert april is not None and [line.kind for line in april.lines] == ["rent", "service"]


def test_an_sla_credit_is_a_negative_line_before_the_invoice_and_a_note_after_it() -> None:
    account = scenario()
    # a fault of 3 hours on 12 March: a day's rent back, 109.00 / 31 = 3.5161 -> 3.52
    assert account.run("sla_credit", "2026-03-12T03:00:00+08:00", start=datetime(2026, 3, 12, 0, tzinfo=CST),
                       end=datetime(2026, 3, 12, 3, tzinfo=CST)) is None
    march = account.invoice("2026-03", sequence=1)
    assert march is not None
    assert ("sla_credit", "0.09", -35_200, -2_900, -32_300) in _lines(march)  # 3.52 x 9/109 = 0.29
    assert march.totals.gross == 1_305_000 - 35_200
    assert account.run("sla_credit", "2026-04-02T03:00:00+08:00", start=datetime(2026, 3, 31, 21, tzinfo=CST),
                       end=datetime(2026, 4, 1, 2, tzinfo=CST)) is None
    assert account.book.billing["notes"][f"{account.offset}/CDF00000001"]["lines"] == {
        "2026-03|sla_credit|2026-03-31": [-35_161, 1, 0]}  # rounded to the fen on the note
    note = account.note(account.offset, "CDF00000001", sequence=2)
    assert note is not None and note.kind == "credit_note" and note.totals.gross == -35_200


# ---------------------------------------------------------------------------- rates and categories


def test_each_month_is_taxed_at_its_own_rate() -> None:
    lines = {"2018-04|rent|": [1_110_000, 1, 0], "2018-05|rent|": [1_100_000, 1, 0],
             "2019-04|rent|": [1_090_000, 1, 0], "2019-04|service|sms": [106_000, 1, 0]}
    document = invoicing.build_document(lines, TABLE, lambda month: SCENARIO.versions[0], plan_id="p",
                                        account_id="A1", numbers=[], month="2019-04", number=None)
    # 111.00 at 11% and 110.00 at 10% and 109.00 at 9% are each 100.00 net
    assert [(line.month, str(line.rate), line.tax, line.net) for line in document.lines] == [
        ("2018-04", "0.11", 110_000, 1_000_000), ("2018-05", "0.1", 100_000, 1_000_000),
        ("2019-04", "0.09", 90_000, 1_000_000), ("2019-04", "0.06", 6_000, 100_000)]
    assert [str(v.rate) for v in document.vat] == ["0.11", "0.1", "0.09", "0.06"]
    assert document.status == "draft" and document.invoice_no is None
    with pytest.raises(ValueError, match="no VAT rate of basic_telecom for 2014-05"):
        invoicing.build_document({"2014-05|rent|": [1, 1, 0]}, TABLE, lambda month: None, plan_id="p",
                                 account_id="A1", numbers=[], month="2014-05", number=None)


def test_a_plan_may_give_a_service_its_category_and_quote_prices_before_vat() -> None:
    version = plan(prices_include_tax=False, services={"extra_line": {"fee": "15.00", "period": "year",
                                                                        "tax_category": "basic_telecom"}}).versions[0]
    lines = {"2026-03|service|extra_line": [150_000, 1, 0], "2026-03|service|ivr": [5_000, 1, 0]}
    document = invoicing.build_document(lines, TABLE, lambda month: version, plan_id="p", account_id="A1",
                                        numbers=[], month="2026-03", number="X1")
    # before VAT: 15.00 + 9% = 16.35; 0.50 + 6% = 0.53 (0.03 exactly)
    assert [(line.item, line.category, line.net, line.tax, line.gross) for line in document.lines] == [
        ("extra_line", "basic_telecom", 150_000, 13_500, 163_500), ("ivr", "value_added_telecom", 5_000, 300, 5_300)]
    assert document.lines[0].description.endswith("(price before VAT)")


def test_vat_rounds_half_up_to_the_fen_away_from_zero() -> None:
    # 0.50 before VAT at 9%: 0.045 -> 0.05; given back: -0.05
    assert invoicing.tax_on_top(5_000, Decimal("0.09")) == 500
    assert invoicing.tax_on_top(-5_000, Decimal("0.09")) == -500
    # 0.0049 of charges is less than half a fen: a line of 0.00; 0.0050 is one fen
    assert invoicing.build_document({"2026-03|rent|": [49, 1, 0]}, TABLE, lambda m: None, plan_id="p",
                                    account_id="A1", numbers=[], month="2026-03", number=None).lines[0].gross == 0
    assert invoicing.build_document({"2026-03|rent|": [50, 1, 0]}, TABLE, lambda m: None, plan_id="p",
                                    account_id="A1", numbers=[], month="2026-03", number=None).lines[0].gross == 100


# ---------------------------------------------------------------------------- packages


def test_a_package_is_invoiced_when_bought_and_what_it_pays_for_is_a_memo() -> None:
    account = Account(plan(package={"price": "100.00", "term_months": 1},
                           rates=[{"segment": "*", "class": "*", "tiers": [{"per_minute": "0.12"}]}]))
    assert account.run("open", "2026-03-10T09:00:00+08:00", plan="p", numbers=["4008123456"],
                       opening_balance=150 * CNY) is None
    account.credit = Credit(100 * CNY - 15_600, account.credit.expires, False)  # 13 min drawn: 1.56
    account.calls("2026-03", 15_600, calls=2, seconds=780, credit_used=15_600)
    assert account.run("close_month", "2026-04-01T00:00:00+08:00", month="2026-03") is None
    march = account.invoice("2026-03", sequence=1)
    assert march is not None
    # the package at 9%: 100.00 -> 8.26; the calls it paid show at 0.00
    assert _lines(march) == [("calls", "0.09", 0, 0, 0), ("package", "0.09", 1_000_000, 82_600, 917_400)]
    assert march.memo == {"credit_drawn": 15_600}
    # the rest of the credit is forfeited at the end of the term: no VAT again, a memo
    assert account.run("topup", "2026-04-11T10:00:00+08:00", amount=10 * CNY, ref="T1") is None
    assert account.run("close_month", "2026-05-01T00:00:00+08:00", month="2026-04") is None
    april = account.invoice("2026-04", sequence=2, when="2026-05-02T10:00:00+08:00")
    assert april is not None and april.lines == [] and april.memo == {"credit_forfeited": 100 * CNY - 15_600}


def test_unused_credit_a_package_refunds_is_a_negative_line() -> None:
    refunded = LedgerEvent(event_id="A1/PackageCreditExpired/x", account_id="A1", kind="PackageCreditExpired",
                           at=datetime(2026, 4, 10, 9, tzinfo=CST), amount=40 * CNY, balance=0,
                           credit_change=-40 * CNY)
    assert invoicing.event_charges(refunded, SCENARIO.zone) == [("2026-04", "package_refund", "", -40 * CNY, 1)]


# ---------------------------------------------------------------------------- memory and the tax file


def test_the_book_forgets_what_is_older_than_its_memory() -> None:
    billing: dict[str, Any] = {"pending": {"2025-01|rent|": [1, 1, 0], "2026-03|rent|": [2, 1, 0]},
                               "invoices": {"2025-01": "N1", "2026-03": "N2"}}
    invoicing.forget(billing, "2025-03")
    assert billing["pending"] == {"2026-03|rent|": [2, 1, 0]} and billing["invoices"] == {"2026-03": "N2"}


def test_the_tax_file_is_checked_and_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "tax.toml"
    path.write_text('[seller]\nid = "s"\nname = "S"\n[categories.basic_telecom]\n'
                    'rates = [{ effective_from = 2019-04-02, rate = 0.09 }]\n')
    with pytest.raises(TariffError) as caught:
        load_tax_rates(path)
    problems = "\n".join(caught.value.problems)
    assert f"{path}: categories > basic_telecom > rates[0]" in problems
    assert "first day of a month" in problems and 'decimal string like "0.09"' in problems
    path.write_text('[seller]\nid = "s"\nname = "S"\n[categories.basic_telecom]\n'
                    'rates = [{ effective_from = 2019-04-01, rate = "0.09" }]\n')
    with pytest.raises(TariffError, match="missing value_added_telecom"):
        load_tax_rates(path)
    assert isinstance(load_tax_rates(), TaxTable)
