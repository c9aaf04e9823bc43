"""Real 400 packages (issue 23) in the ledger fold and the plan files, without Kafka.

Term packages with credit that ends, floors and rent per number, the opening month,
minimum top-ups, lock-in, services by period and grades that need a dearer package.
Amounts are worked out by hand in the comments (CNY); the fold counts units of 0.0001 CNY.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from rating.ledger import Book, Credit, Terms, apply_command
from schemas.ledger import LedgerCommand, LedgerEvent
from tariffs import Plan
from tariffs.grades import GradeFees
from tariffs.models import PlanVersion

CST = timezone(timedelta(hours=8))
CNY = 10_000
NUMBERS = ["4008123456", "4001302468"]


def plan(**version: Any) -> Plan:
    return Plan.model_validate(
        {"id": "p", "timezone": "Asia/Shanghai",
         "versions": [{"effective_from": "2026-01-01T00:00:00+08:00", **version}]}
    )


PACKAGE = plan(package={"price": "100.00", "term_months": 1}, rates=[
    {"segment": "*", "class": "*", "tiers": [{"per_minute": "0.12"}]}])


class Account:
    """One account's book, balance and credit, folded command by command."""

    def __init__(self, terms_plan: Plan, threshold: int = 50 * CNY) -> None:
        self.terms = Terms("A1", terms_plan, threshold)
        self.book, self.balance, self.credit = Book(), 0, None
        self.events: list[LedgerEvent] = []
        self.alerts: list[dict[str, Any]] = []

    def run(self, kind: str, when: str, **fields: Any) -> str | None:
        command = LedgerCommand(kind=kind, account_id="A1", at=datetime.fromisoformat(when), **fields)
        book, balance, out = apply_command(self.book, self.balance, command, self.terms, credit=self.credit)
        if out.refusal is None:
            self.book, self.balance, self.credit = book, balance, out.credit
            self.events, self.alerts = out.events, out.alerts
        return out.refusal

    def open(self, balance_cny: str, when: str = "2026-03-10T09:00:00+08:00", numbers: list[str] = NUMBERS[:1]) -> None:
        assert self.run("open", when, plan="p", numbers=numbers, opening_balance=int(float(balance_cny) * CNY)) is None

    def kinds(self) -> list[tuple[str, int, int]]:
        return [(e.kind, e.amount, e.credit_change) for e in self.events]


# ---------------------------------------------------------------------------- term packages


def test_opening_on_a_package_plan_buys_it_and_its_credit_ends_a_term_later() -> None:
    account = Account(PACKAGE)
    account.open("150.00")  # 150 - 100 = 50 left, credit 100 until 2026-04-10 09:00
    assert account.kinds()[-1] == ("PackagePurchased", -100 * CNY, 100 * CNY)
    assert account.balance == 50 * CNY
    assert account.credit == Credit(100 * CNY, datetime(2026, 4, 10, 9, tzinfo=CST), False)
    # A top-up the day before the end changes nothing of the credit; one at the end ends it.
    assert account.run("topup", "2026-04-10T08:59:59+08:00", amount=10 * CNY, ref="T1") is None
    assert account.credit is not None and account.credit.amount == 100 * CNY
    assert account.run("topup", "2026-04-10T09:00:00+08:00", amount=10 * CNY, ref="T2") is None
    assert account.kinds() == [("PackageCreditExpired", 0, -100 * CNY), ("TopUpReceived", 10 * CNY, 0)]
    assert account.events[0].at == datetime(2026, 4, 10, 9, tzinfo=CST)  # at the end, not at the top-up
    assert account.credit is None and account.balance == 70 * CNY
    assert account.alerts == []  # forfeited credit raises no alert


def test_a_package_the_opening_balance_cannot_pay_is_refused() -> None:
    account = Account(PACKAGE)
    refusal = account.run("open", "2026-03-10T09:00:00+08:00", plan="p", numbers=NUMBERS[:1],
                          opening_balance=99 * CNY)
    assert refusal is not None and "does not pay for the package" in refusal and account.book.opened_at is None


def test_unused_refund_gives_the_rest_to_the_balance_and_a_month_close_ends_it() -> None:
    account = Account(plan(package={"price": "100.00", "credit": "120.00", "term_months": 1, "unused": "refund"}))
    account.open("100.00")  # balance 0, credit 120.00 until 2026-04-10 09:00
    assert (account.balance, account.credit.amount) == (0, 120 * CNY)  # type: ignore[union-attr]
    assert account.run("close_month", "2026-05-02T00:00:00+08:00", month="2026-04") is None
    assert account.kinds()[0] == ("PackageCreditExpired", 120 * CNY, -120 * CNY)
    assert account.balance == 120 * CNY and account.credit is None


def test_a_renewal_restarts_or_extends_the_term_and_adds_the_credit() -> None:
    restart = Account(PACKAGE)
    restart.open("300.00")  # balance 200, credit 100 until 04-10
    assert restart.run("renew", "2026-03-20T12:00:00+08:00") is None
    assert restart.kinds() == [("PackageRenewed", -100 * CNY, 100 * CNY)]
    assert restart.balance == 100 * CNY
    assert restart.credit == Credit(200 * CNY, datetime(2026, 4, 20, 12, tzinfo=CST), False)

    extend = Account(plan(package={"price": "100.00", "term_months": 1, "renewal": "extend",
                                   "renewal_price": "80.00"}))
    extend.open("300.00")
    assert extend.run("renew", "2026-03-20T12:00:00+08:00") is None
    assert extend.balance == 120 * CNY  # 300 - 100 - 80
    assert extend.credit == Credit(200 * CNY, datetime(2026, 5, 10, 9, tzinfo=CST), False)


def test_a_renewal_the_balance_cannot_pay_is_refused_and_one_after_the_end_starts_afresh() -> None:
    account = Account(PACKAGE)
    account.open("150.00")  # balance 50
    refusal = account.run("renew", "2026-03-20T12:00:00+08:00")
    assert refusal is not None and "top up first" in refusal
    assert account.run("topup", "2026-04-15T10:00:00+08:00", amount=60 * CNY, ref="T") is None  # ends the credit
    assert account.run("renew", "2026-04-15T11:00:00+08:00") is None  # 110 - 100
    assert account.balance == 10 * CNY
    assert account.credit == Credit(100 * CNY, datetime(2026, 5, 15, 11, tzinfo=CST), False)


def test_floor_charges_draw_on_the_credit_first_and_rent_does_not() -> None:
    account = Account(plan(package={"price": "100.00", "term_months": 3}, monthly_rent="30.00",
                           minimum_monthly_spend="40.00"))
    account.open("200.00", when="2026-03-01T00:00:00+08:00")  # balance 100, credit 100
    assert account.run("close_month", "2026-04-01T00:00:00+08:00", month="2026-03") is None
    # rent 30 from the balance; the 40 true-up (no calls) from the credit
    assert account.kinds() == [
        ("MonthClosed", 0, 0), ("RentCharged", -30 * CNY, 0), ("MinimumSpendTrueUp", 0, -40 * CNY)]
    assert (account.balance, account.credit.amount) == (70 * CNY, 60 * CNY)  # type: ignore[union-attr]


def test_cancelling_forfeits_the_credit_with_the_refund() -> None:
    account = Account(PACKAGE)
    account.open("150.00")  # balance 50, credit 100
    assert account.run("cancel", "2026-03-12T10:00:00+08:00") is None
    # The notice ends on 04-11, after the credit's end (04-10): it ends first, then the refund of the balance.
    assert account.run("close_month", "2026-05-02T00:00:00+08:00", month="2026-04") is None
    assert [e.kind for e in account.events] == ["PackageCreditExpired", "NumberFrozen", "MonthClosed", "RefundIssued"]
    assert [e.amount for e in account.events if e.kind == "RefundIssued"] == [-50 * CNY]


def test_the_refund_of_a_cancelled_account_never_includes_forfeitable_credit() -> None:
    account = Account(plan(package={"price": "100.00", "term_months": 12}))
    account.open("150.00")
    assert account.run("cancel", "2026-03-12T10:00:00+08:00") is None
    assert account.run("close_month", "2026-05-02T00:00:00+08:00", month="2026-04") is None
    ended = [(e.kind, e.amount, e.credit_change) for e in account.events if e.kind.startswith(("Package", "Refund"))]
    assert ended == [("PackageCreditExpired", 0, -100 * CNY), ("RefundIssued", -50 * CNY, 0)]


# ---------------------------------------------------------------------------- per number, opening month


def test_floors_per_number_charge_each_number_its_shortfall_and_full_opens_in_full() -> None:
    account = Account(plan(minimum_monthly_spend="50.00", minimum_scope="number", first_month="full",
                           monthly_rent="10.00", rent_scope="number"))
    account.open("500.00", numbers=NUMBERS)
    account.book.number_usage = {"2026-03": {NUMBERS[0]: 1 * CNY}}  # 1.00 of calls on the first number
    account.book.usage = {"2026-03": 1 * CNY}
    assert account.run("close_month", "2026-04-01T00:00:00+08:00", month="2026-03") is None
    # full: rent 10 per number, not pro-rated; floors 50 - 1 = 49 and 50 - 0 = 50
    assert [(e.event_id.split("/", 2)[2], e.amount) for e in account.events if e.kind != "MonthClosed"] == [
        (f"2026-03/{NUMBERS[0]}", -10 * CNY), (f"2026-03/{NUMBERS[1]}", -10 * CNY),
        (f"2026-03/{NUMBERS[0]}", -49 * CNY), (f"2026-03/{NUMBERS[1]}", -50 * CNY),
    ]
    assert account.balance == (500 - 20 - 99) * CNY


@pytest.mark.parametrize(("first_month", "charged"), [
    ("prorate", [("MonthClosed", 0), ("RentCharged", -220_000)]),  # 31 x 22/31
    ("actual", [("MonthClosed", 0)]),
])
def test_the_opening_month_is_prorated_or_charged_its_calls_only(first_month: str, charged: list) -> None:
    account = Account(plan(monthly_rent="31.00", minimum_monthly_spend="50.00", first_month=first_month))
    account.open("500.00")  # opened on 03-10: 22 of 31 days
    assert account.run("close_month", "2026-04-01T00:00:00+08:00", month="2026-03") is None
    assert [(e.kind, e.amount) for e in account.events] == charged
    assert account.run("close_month", "2026-05-01T00:00:00+08:00", month="2026-04") is None
    assert [e.kind for e in account.events] == ["MonthClosed", "RentCharged", "MinimumSpendTrueUp"]  # the next month in full


# ---------------------------------------------------------------------------- top-ups, lock-in


def test_a_top_up_below_the_minimum_is_refused_naming_it() -> None:
    account = Account(plan(min_topup="50.00"))
    account.open("0")
    refusal = account.run("topup", "2026-03-12T10:00:00+08:00", amount=10 * CNY, ref="SMALL")
    assert refusal is not None and "minimum top-up" in refusal and str(50 * CNY) in refusal
    assert account.run("topup", "2026-03-12T10:00:00+08:00", amount=50 * CNY, ref="OK") is None


def test_the_lock_in_refuses_an_early_cancellation_or_charges_the_floors_left() -> None:
    refuse = Account(plan(min_term_months=3))
    refuse.open("500.00")  # term ends 2026-06-10 09:00
    refusal = refuse.run("cancel", "2026-04-20T10:00:00+08:00")
    assert refusal is not None and "minimum term" in refusal
    assert refuse.run("cancel", "2026-06-10T09:00:00+08:00") is None

    charged = Account(plan(min_term_months=3, early_termination="remaining_floor", minimum_monthly_spend="40.00",
                           minimum_scope="number", package={"price": "50.00", "term_months": 12}))
    charged.open("500.00", numbers=NUMBERS)  # balance 450, credit 50
    assert charged.run("cancel", "2026-04-20T10:00:00+08:00") is None
    # 04-20 to 06-10: 2 started months x 40 x 2 numbers = 160: 50 from the credit, 110 from the balance
    assert charged.kinds()[0] == ("EarlyTerminationCharged", -110 * CNY, -50 * CNY)
    assert charged.book.current == "cancelling" and charged.balance == 340 * CNY


# ---------------------------------------------------------------------------- services


def test_services_are_charged_by_month_year_once_or_never_when_included() -> None:
    account = Account(plan(services={
        "ivr": {"fee": "30.00", "included": True},
        "extra_line": {"fee": "15.00", "period": "year"},
        "ringback": {"fee": "200.00", "period": "once"},
    }))
    account.open("1000.00", when="2026-01-05T09:00:00+08:00")
    assert account.run("services", "2026-01-05T10:00:00+08:00", enable=["ivr", "extra_line", "ringback"]) is None
    fees = {}
    for month in ("2026-01", "2026-02", "2026-12", "2027-01", "2027-02"):
        closing = f"{int(month[:4]) + (month[5:] == '12')}-{int(month[5:]) % 12 + 1:02d}-01T00:00:00+08:00"
        assert account.run("close_month", closing, month=month) is None
        fees[month] = sorted((e.reference, e.detail, -e.amount) for e in account.events if e.kind == "ServiceFeeCharged")
    assert fees == {
        "2026-01": [("2026-01", "extra_line yearly fee", 15 * CNY), ("2026-01", "ringback one-off fee", 200 * CNY)],
        "2026-02": [], "2026-12": [],
        "2027-01": [("2027-01", "extra_line yearly fee", 15 * CNY)],
        "2027-02": [],
    }
    refusal = account.run("services", "2027-02-10T10:00:00+08:00", enable=["fax"])
    assert refusal is not None and "no service fax" in refusal


def test_the_four_services_keep_their_monthly_defaults_and_the_short_form_still_reads() -> None:
    version = PlanVersion.model_validate({"effective_from": "2026-01-01T00:00:00+08:00", "services": {"ivr": "25.00"}})
    assert {name: (s.fee, s.period, s.included) for name, s in version.services.items()} == {
        "ivr": (25 * CNY, "month", False), "recording": (50 * CNY, "month", False),
        "blacklist": (10 * CNY, "month", False), "sms": (20 * CNY, "month", False),
    }
    with pytest.raises(ValidationError, match="period"):
        PlanVersion.model_validate({"effective_from": "2026-01-01T00:00:00+08:00",
                                    "services": {"fax": {"fee": "1.00", "period": "week"}}})


# ---------------------------------------------------------------------------- grades, plan files


def test_a_grade_may_need_a_dearer_package() -> None:
    fees = GradeFees.model_validate({"minimum_package": {"S": {"price": "3000.00"}, "A": {"floor": "100.00"}}})
    cheap = PACKAGE.versions[0]
    assert "grade S" in (fees.refuses("4008123456", cheap) or "")  # S: six consecutive digits
    assert fees.refuses("4008123456", plan(package={"price": "3000.00", "term_months": 36}).versions[0]) is None
    assert "a floor of at least" in (fees.refuses("4001377770", cheap) or "")  # A
    assert fees.refuses("4001377770", plan(minimum_monthly_spend="120.00").versions[0]) is None
    assert fees.refuses("4001302468", cheap) is None  # C: no minimum


def test_a_rate_of_any_class_may_share_its_segment_with_a_specific_one() -> None:
    version = plan(rates=[{"segment": "*", "class": "*", "tiers": [{"per_minute": "0.12"}]},
                          {"segment": "*", "class": "local", "tiers": [{"per_minute": "0.10"}]}]).versions[0]
    assert [r.call_class for r in version.rates] == ["*", "local"]
    with pytest.raises(ValidationError, match="share segment"):
        plan(rates=[{"segment": "*", "class": "*", "tiers": [{"per_minute": "0.12"}]}] * 2)


# ---------------------------------------------------------------------------- rating and the worker


def _packages_set() -> tuple[Any, Any, Any]:
    from rating import Catalog
    from schemas.cdr_csv import parse_csv
    from tariffs import load_tariffs
    from tests.conftest import VECTORS

    folder = VECTORS / "packages"
    tariffs = load_tariffs(folder / "plans", folder / "accounts.toml")
    return tariffs, Catalog.from_tariffs(tariffs), parse_csv((folder / "cdrs.csv").read_bytes())


def test_the_packages_set_leaves_the_balances_and_credits_worked_out_by_hand() -> None:
    # Its expected rated.csv carries balance, credit_used and credit too (the comments of
    # its accounts.toml work them out); compare checks spec 6's columns only.
    import csv

    from rating import RatingState, rate
    from schemas.money import format_money
    from tests.conftest import VECTORS

    _, catalog, batch = _packages_set()
    rated = rate(batch, RatingState.empty(), catalog).rated
    with (VECTORS / "packages" / "expected" / "rated.csv").open() as handle:
        want = [(r["cdr_id"], r["balance"], r["credit_used"], r["credit"]) for r in csv.DictReader(handle)]
    got = [(c, format_money(b), format_money(u), format_money(k))
           for c, b, u, k in rated.select("cdr_id", "balance", "credit_used", "credit").iter_rows()]
    assert got == want


@pytest.mark.parametrize(("chunk_lines", "batch_size"), [(50, 100), (1, 1), (2, 3)])
def test_the_worker_ends_credit_once_in_any_split_of_the_log(chunk_lines: int, batch_size: int) -> None:
    import json

    import polars as pl

    from rating import RatingState, rate
    from streams.worker.batch import rate_messages
    from streams.worker.messages import SourceMessage
    from streams.worker.sinks import read_output
    from streams.worker.state_records import RecordFold, rating_state
    from tariffs.models import opened_instant
    from tests.test_rating_batch import TOPIC, _messages, _outputs, _write

    tariffs, catalog, batch = _packages_set()
    whole = rate(batch, RatingState.empty(), catalog)
    # The log as the pipeline has it: each account's import (cdrflow load), then its calls.
    opens = [
        SourceMessage(a.id.encode(), sum(a.id.encode()) % 3, 0, json.dumps(LedgerCommand(
            kind="open", account_id=a.id, at=opened_instant(a, tariffs.plans[a.plan]), plan=a.plan, numbers=a.numbers,
            opening_balance=a.opening_balance, imported=True).message_value()).encode())
        for a in tariffs.accounts
    ]
    calls = [SourceMessage(m.key, m.partition, m.offset + 1, m.value)
             for m in _messages(batch, tariffs.account_of_number(), chunk_lines)]
    table, outcomes = RecordFold(), []
    messages = opens + calls
    for start in range(0, len(messages), batch_size):
        part = messages[start:start + batch_size]
        outcome = rate_messages(part, {m.key: table.accounts.get(m.key) for m in part}, catalog, TOPIC)
        _write(table, outcome)
        outcomes.append(outcome)

    columns = ["cdr_id", "account_id", "amount", "balance", "credit_used", "credit"]
    assert _outputs(outcomes, "rated").select(columns).sort("account_id", "cdr_id").equals(
        whole.rated.select(columns).sort("account_id", "cdr_id"))
    events = pl.concat([read_output(m.value, "ledger") for o in outcomes for m in o.outputs if m.kind == "ledger"])
    ended = events.filter(pl.col("kind") == "PackageCreditExpired").select("event_id", "amount", "credit_change")
    # P1's 98.44 forfeited and P2's 21.60 to the balance, each once, at the credit's end.
    assert sorted(ended.rows()) == [
        ("P1/PackageCreditExpired/2026-04-10T01:00:00+00:00", 0, -984_400),
        ("P2/PackageCreditExpired/2026-04-30T16:00:00+00:00", 216_000, -216_000),
    ]
    bought = events.filter(pl.col("kind") == "PackagePurchased").select("account_id", "amount", "credit")
    assert sorted(bought.rows()) == [("P1", -1_000_000, 1_000_000), ("P2", -200_000, 220_000),
                                     ("P3", -1_000_000, 1_000_000)]
    # What the worker keeps: P3's credit is used up but lasts until its end; the others' ended.
    state = rating_state({a.id: table.accounts.get(a.id.encode()) for a in tariffs.accounts})
    assert state.credits.select("account_id", "credit").rows() == [("P3", 0)]
    assert dict(state.balances.iter_rows()) == dict(whole.state.balances.iter_rows())


def test_a_correction_moves_the_balance_and_keeps_the_credit_as_billed(tmp_path: Any) -> None:
    # The package's 0.12 was entered for a dearer 0.15: March is rated again. A correction
    # moves the balance only (docs/rules.md): the credit each call drew on and left, and what
    # ended at the term's end, stay as billed.
    from datetime import date

    import polars as pl

    from rating import Catalog, RatingState, rate
    from rating.corrected_history import Billed
    from rating.rerate import Period
    from tests.conftest import VECTORS
    from tests.test_rerate import _catalogs, _correct, _log

    folder = VECTORS / "packages"
    # (a copy of the set's plans at 0.15, the set's own plans at 0.12)
    dearer, entered = _catalogs(tmp_path, folder, 'per_minute = "0.12"', 'per_minute = "0.15"', plan="pkg-1m-100.toml")
    log = _log((folder / "cdrs.csv").read_bytes())
    catalog = Catalog.from_tariffs(entered)
    billed_run = rate(log, RatingState.empty(), catalog)
    ended = billed_run.expiries
    events = ended.select(
        "account_id", pl.format("{}/PackageCreditExpired", "account_id").alias("event_id"),
        pl.lit("PackageCreditExpired").alias("kind"),
        pl.when(pl.col("credit_refund")).then(pl.col("credit_expired")).otherwise(0).alias("amount"),
        pl.lit(0, dtype=pl.Int64).alias("opening_balance"), pl.lit(date(2026, 4, 10)).alias("local_day"),
        "partition", "offset", (pl.col("line") - 1).alias("seq"),
        (-pl.col("credit_expired")).alias("credit_change"), pl.lit(0, dtype=pl.Int64).alias("credit"),
    )
    accounts = catalog.accounts
    billed = Billed(
        rated=billed_run.rated.with_columns(version=pl.lit(0, dtype=pl.UInt64), correction_id=pl.lit("")),
        rejected=billed_run.rejected,
        events=events,
        cap_alerts=billed_run.alerts.filter(pl.col("kind") == "daily_cap_reached").select("account_id", "cdr_id"),
        # the funds before the log: the opening balance less the package, plus its credit
        opening=accounts.select("account_id", (pl.col("opening_balance") - pl.col("package_price")
                                              + pl.col("opening_credit")).alias("balance")),
    )
    found = _correct(log, billed, dearer, Period(date(2026, 3, 1), date(2026, 3, 31)))
    rows = {r["cdr_id"]: r for r in found.new_rows.iter_rows(named=True)}
    # P1: 3 min 0.36 -> 0.45, 10 min 1.20 -> 1.50: the credit stays 99.64 and 98.44, the
    # balance pays the 0.09 and 0.30: 49.91 and 49.61.
    assert [(rows[c]["amount"], rows[c]["credit_used"], rows[c]["credit"], rows[c]["balance"]) for c in ("p1-01", "p1-02")] == [
        (4_500, 3_600, 996_400, 499_100), (15_000, 12_000, 984_400, 496_100)]
    balances = {r["account_id"]: (r["balance"], r["corrected_balance"]) for r in found.balances.iter_rows(named=True)}
    assert balances["P1"] == (497_600, 493_700)  # 49.76 -> 49.37
    # P3: 0.03 + 24.00 + 1.80 + 0.03 = 25.86 more: -3.44 -> -29.30. Its funds now fall
    # below 0 at p3-02 (3.88 - 24.03): arrears moves there, low_balance stays, with the
    # balance -24.03.
    assert balances["P3"] == (-34_400, -293_000)
    moved = {(r["kind"], r["cdr_id"], r["change"]): r["balance"] for r in found.alerts.iter_rows(named=True)
             if r["account_id"] == "P3"}
    assert moved == {("low_balance", "p3-02", "move"): -240_300, ("arrears", "p3-02", "appear"): -240_300,
                     ("arrears", "p3-03", "vanish"): -33_200}
