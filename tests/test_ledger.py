"""The ledger fold (rating/ledger.py) and the number grades, without Kafka.

Amounts are hand-computed from spec/ledger.md; units of 0.0001 CNY.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from rating.ledger import Book, Terms, after_calls, apply_command, month_bounds
from rating.tiers import round_half_up
from schemas.ledger import LedgerCommand
from tariffs import Plan
from tariffs.grades import GradeFees, grade

CST = timezone(timedelta(hours=8))
PLAN = Plan.model_validate(
    {
        "id": "p",
        "timezone": "Asia/Shanghai",
        "versions": [
            {
                "effective_from": "2026-01-01T00:00:00+08:00",
                "monthly_rent": "310.00",  # 10.00 a day in a 31-day month
                "minimum_monthly_spend": "100.00",
                "opening_fee": "50.00",
                "keep_number_fee": "15.00",
                "services": {"ivr": "30.00", "recording": "50.00", "blacklist": "10.00", "sms": "20.00"},
                "sla_credit_after_minutes": 120,
            }
        ],
    }
)
TERMS = Terms("A1", PLAN, low_balance_threshold=500_000)
CNY = 10_000


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def run(book: Book, balance: int, kind: str, when: str, **fields: object):
    command = LedgerCommand(kind=kind, account_id="A1", at=at(when), **fields)  # type: ignore[arg-type]
    return apply_command(book, balance, command, TERMS)


def opened(balance_cny: int = 1000, when: str = "2026-03-11T09:00:00+08:00") -> tuple[Book, int]:
    book, balance, out = run(
        Book(), 0, "open", when, plan="p", numbers=["4008123456", "4001302468"],
        opening_balance=balance_cny * CNY, opening_fee=50 * CNY,
        number_fees={"4008123456": ("S", 10_000 * CNY), "4001302468": ("C", 0)},
    )
    assert out.refusal is None
    return book, balance


def test_opening_charges_the_opening_fee_and_the_selection_fees_by_grade() -> None:
    book, balance, out = run(
        Book(), 0, "open", "2026-03-11T09:00:00+08:00", plan="p", numbers=["4008123456"],
        opening_balance=20_000 * CNY, opening_fee=50 * CNY, number_fees={"4008123456": ("S", 10_000 * CNY)},
    )
    assert [(e.kind, e.amount, e.balance) for e in out.events] == [
        ("AccountOpened", -50 * CNY, 19_950 * CNY),
        ("NumberAssigned", -10_000 * CNY, 9_950 * CNY),
    ]
    assert balance == 9_950 * CNY and book.current == "active"
    assert [s[:2] for s in out.statuses] == [("4008123456", "active")]


def test_selection_fees_that_exhaust_the_balance_raise_alerts_and_suspend() -> None:
    book, balance = opened(balance_cny=5000)  # 5000 - 50 - 10000 < 0
    assert balance == (5000 - 50 - 10_000) * CNY
    assert book.suspended and book.shown_state() == "suspended"


def test_a_top_up_is_recorded_once_and_a_reused_reference_is_refused() -> None:
    book, balance = opened()
    book, balance, out = run(book, balance, "topup", "2026-03-12T10:00:00+08:00", amount=200 * CNY, ref="P1")
    assert [(e.kind, e.amount) for e in out.events] == [("TopUpReceived", 200 * CNY)]
    again = run(book, balance, "topup", "2026-03-12T11:00:00+08:00", amount=200 * CNY, ref="P1")
    assert again[1] == balance and again[2].events == [] and again[2].refusal is None
    other = run(book, balance, "topup", "2026-03-12T11:00:00+08:00", amount=300 * CNY, ref="P1")
    assert other[1] == balance and other[2].events == [] and "already used" in (other[2].refusal or "")


def test_arrears_suspend_and_a_top_up_back_to_zero_reactivates() -> None:
    book, balance = opened(balance_cny=20_000)
    book, balance, out = after_calls(book, -5 * CNY, TERMS, [("c9", at("2026-03-15T10:00:00+08:00"))])
    assert [e.kind for e in out.events] == ["AccountSuspended"] and book.suspended
    assert {s[1] for s in out.statuses} == {"blocked"}
    book, balance, out = run(book, balance, "topup", "2026-03-16T10:00:00+08:00", amount=4 * CNY, ref="P2")
    assert book.suspended and [e.kind for e in out.events] == ["TopUpReceived"]  # still -1.00
    book, balance, out = run(book, balance, "topup", "2026-03-16T11:00:00+08:00", amount=1 * CNY, ref="P3")
    assert balance == 0 and not book.suspended
    assert [e.kind for e in out.events] == ["TopUpReceived", "AccountReactivated"]


def test_month_close_prorates_the_opening_month_and_charges_services_and_shortfall_once() -> None:
    book, balance = opened(balance_cny=20_000)  # opened 11 March: 21 of 31 days
    book, balance, _ = run(book, balance, "services", "2026-03-20T10:00:00+08:00", enable=["ivr"])
    book.usage["2026-03"] = 40 * CNY
    before = balance
    book, balance, out = run(book, balance, "close_month", "2026-04-02T00:00:00+08:00", month="2026-03")
    rent = round_half_up(310 * CNY * 21, 31)
    # no minimum spend: the account was not open on 1 March
    assert [(e.kind, e.amount) for e in out.events] == [
        ("MonthClosed", 0), ("RentCharged", -rent), ("ServiceFeeCharged", -30 * CNY)]
    assert all(e.at == month_bounds("2026-03", PLAN.zone)[1] - timedelta(microseconds=1) for e in out.events)
    assert balance == before - rent - 30 * CNY
    again = run(book, balance, "close_month", "2026-04-03T00:00:00+08:00", month="2026-03")
    assert again[2].events == [] and again[1] == balance


def test_a_full_month_gets_the_minimum_spend_true_up() -> None:
    book, balance = opened(balance_cny=20_000, when="2026-02-20T09:00:00+08:00")
    book.usage["2026-03"] = 40 * CNY
    book, balance, out = run(book, balance, "close_month", "2026-04-02T00:00:00+08:00", month="2026-03")
    assert [(e.kind, e.amount) for e in out.events] == [
        ("MonthClosed", 0), ("RentCharged", -310 * CNY), ("MinimumSpendTrueUp", -60 * CNY)]


def test_a_kept_month_has_no_rent_and_the_keep_number_fee() -> None:
    book, balance = opened(balance_cny=20_000, when="2026-02-20T09:00:00+08:00")
    book, balance, out = run(book, balance, "keep", "2026-02-25T09:00:00+08:00")
    assert book.current == "kept" and [s[1] for s in out.statuses] == ["blocked", "blocked"]
    book, balance, out = run(book, balance, "close_month", "2026-04-02T00:00:00+08:00", month="2026-03")
    assert [(e.kind, e.amount) for e in out.events] == [("MonthClosed", 0), ("KeepNumberFeeCharged", -15 * CNY)]
    assert book.inactive_periods()[0][1] is None
    book, balance, out = run(book, balance, "resume", "2026-04-10T09:00:00+08:00")
    assert book.current == "active" and [e.kind for e in out.events] == ["KeepNumberEnded"]


def test_sla_credit_per_day_touched_longer_than_the_limit_once() -> None:
    book, balance = opened(balance_cny=20_000, when="2026-02-20T09:00:00+08:00")
    # 21:00 on the 5th to 03:00 on the 7th: 3 h, 24 h, 3 h on three local days
    fault = {"start": "2026-03-05T21:00:00+08:00", "end": "2026-03-07T03:00:00+08:00"}
    book, balance, out = run(book, balance, "sla_credit", "2026-03-07T03:00:00+08:00", **fault)
    assert [(e.kind, e.reference, e.amount) for e in out.events] == [
        ("SlaCreditGranted", "2026-03-05", 10 * CNY),
        ("SlaCreditGranted", "2026-03-06", 10 * CNY),
        ("SlaCreditGranted", "2026-03-07", 10 * CNY),
    ]
    short = {"start": "2026-03-07T03:00:00+08:00", "end": "2026-03-07T04:00:00+08:00"}
    assert run(book, balance, "sla_credit", "2026-03-07T04:00:00+08:00", **short)[2].events == []
    assert run(book, balance, "sla_credit", "2026-03-08T00:00:00+08:00", **fault)[2].events == []


def test_cancellation_freezes_at_the_notice_end_refunds_after_that_month_then_closes() -> None:
    book, balance = opened(balance_cny=20_000, when="2026-02-20T09:00:00+08:00")
    book, balance, out = run(book, balance, "cancel", "2026-03-10T12:00:00+08:00")
    assert book.shown_state() == "cancelling"
    book, balance, out = run(book, balance, "close_month", "2026-05-01T00:00:00+08:00", month="2026-04")
    assert [(e.kind, e.at) for e in out.events][0] == ("NumberFrozen", at("2026-04-09T12:00:00+08:00"))
    kinds = [e.kind for e in out.events]
    # April: cancelling until the 9th, so rent (billing continues during the notice)
    assert kinds == ["NumberFrozen", "MonthClosed", "RentCharged", "RefundIssued"]
    rent, refund = out.events[2], out.events[3]
    assert rent.amount == -310 * CNY and refund.amount == -rent.balance and balance == 0
    assert refund.at == at("2026-04-30T23:59:59.999999+08:00")
    assert refund.reference == "2026-07-02"  # 45 working days after 30 April 2026
    assert book.current == "frozen" and {s[1] for s in out.statuses} == {"blocked"}
    refused = run(book, balance, "cancel", "2026-05-02T00:00:00+08:00")
    assert refused[2].refusal and refused[2].events == []
    book, balance, out = run(book, balance, "close_month", "2026-06-01T00:00:00+08:00", month="2026-05")
    assert [e.kind for e in out.events] == ["MonthClosed"]  # frozen all May: no fees
    book, balance, out = run(book, balance, "close_month", "2026-08-01T00:00:00+08:00", month="2026-07")
    assert [e.kind for e in out.events] == ["AccountClosed", "MonthClosed"] and book.current == "closed"
    assert {s[1] for s in out.statuses} == {"released"}


def test_a_negative_balance_at_the_refund_waits_until_paid() -> None:
    book, balance = opened(balance_cny=10_100, when="2026-02-20T09:00:00+08:00")  # 50.00 left
    book, balance, _ = run(book, balance, "cancel", "2026-03-10T12:00:00+08:00")
    book, balance, out = run(book, balance, "close_month", "2026-05-01T00:00:00+08:00", month="2026-04")
    assert balance == (50 - 310) * CNY and book.refund_pending
    assert "RefundIssued" not in [e.kind for e in out.events]
    book, balance, out = run(book, balance, "topup", "2026-05-05T10:00:00+08:00", amount=300 * CNY, ref="LAST")
    assert [(e.kind, e.amount) for e in out.events] == [("TopUpReceived", 300 * CNY), ("RefundIssued", -40 * CNY)]
    assert balance == 0 and not book.refund_pending


def test_inactive_periods_include_the_scheduled_freeze() -> None:
    book, balance = opened()
    book, balance, _ = run(book, balance, "cancel", "2026-03-20T00:00:00+08:00")
    (start, end), = book.inactive_periods()
    assert start == at("2026-04-19T00:00:00+08:00") and end is None


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("4001888888", "S"), ("4008123456", "S"), ("4008987654", "S"), ("4000012345", "S"),
        ("4001377770", "A"), ("4001305678", "A"), ("4001309876", "A"), ("4001123123", "A"), ("4001112233", "A"),
        ("4001300070", "B"), ("4001301122", "B"), ("4001301212", "B"), ("4001399913", "B"),
        ("4001302468", "C"), ("4001357913", "C"), ("4001302010", "C"),
    ],
)
def test_number_grades_first_match_wins(number: str, expected: str) -> None:
    assert grade(number) == expected


@pytest.mark.parametrize("bad", ["400123456", "4011234567", "40012345678", "400abcdefg"])
def test_a_number_that_is_no_400_number_has_no_grade(bad: str) -> None:
    with pytest.raises(ValueError, match="not a 400 number"):
        grade(bad)


def test_default_grade_fees() -> None:
    fees = GradeFees()
    assert [fees.fee(g) for g in "SABC"] == [10_000 * CNY, 3000 * CNY, 800 * CNY, 0]
