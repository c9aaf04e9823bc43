"""The fold of a correction part (rating.ledger ``rerate``, rating.corrected_state), without Kafka.

Given a book and a balance, when a ``rerate`` command comes, then: one CallRerated per
call, the balance moved by the deltas once, the part recorded, stale corrections refused.
"""

from __future__ import annotations

from datetime import date, datetime

import polars as pl

from rating.corrected_state import corrected_state
from rating.ledger import LEDGER_MEMORY_MONTHS, Book, apply_command
from rating.state import RatingState
from schemas.corrections import CallChange, Correction, DayChange
from schemas.ledger import LedgerCommand
from tests.test_ledger import CNY, TERMS, opened

CID = "00112233445566aa"


def _call(cdr_id: str, old: int, new: int, day: str = "2026-03-12", **deltas: int) -> CallChange:
    return CallChange(cdr_id=cdr_id, local_day=day, call_class="local", old_amount=old, new_amount=new, **deltas)


def _rerate(
    calls: list[CallChange], *, cid: str = CID, part: int = 0, parts: int = 1, based_on: int = 40,
    at: str = "2026-04-03T10:00:00+08:00",
) -> LedgerCommand:
    correction = Correction(
        correction_id=cid, part=part, parts=parts, based_on=based_on, period_from="2026-03-01",
        period_to="2026-03-31", calls=calls, rows={"v": 1, "rows": {"cdr_id": [c.cdr_id for c in calls]}},
    )
    return LedgerCommand(kind="rerate", account_id="A1", at=datetime.fromisoformat(at), correction=correction)


def test_each_call_is_one_call_rerated_event_and_the_balance_moves_by_the_deltas() -> None:
    book, balance = opened(balance_cny=20_000)
    command = _rerate([_call("c1", 3000, 4000), _call("c2", 2000, 1700)])
    after, moved, out = apply_command(book, balance, command, TERMS, offset=50)
    assert out.refusal is None
    assert [(e.event_id, e.kind, e.amount, e.reference) for e in out.events] == [
        (f"A1/CallRerated/c1/{CID}", "CallRerated", -1000, "2026-03/c1"),
        (f"A1/CallRerated/c2/{CID}", "CallRerated", 300, "2026-03/c2"),
    ]
    assert moved == balance - 700
    assert out.alerts == []  # a correction brings its alerts, re-evaluated on the corrected history
    assert after.corrections == {CID: ["2026-04", [0]]} and after.corrected_offset == 50


def test_a_part_applies_once_whatever_copy_of_it_comes() -> None:
    book, balance = opened(balance_cny=20_000)
    command = _rerate([_call("c1", 3000, 4000)])
    book, balance, _ = apply_command(book, balance, command, TERMS, offset=50)
    again, same, out = apply_command(book, balance, command, TERMS, offset=61)  # the CLI retried, or raced
    assert (same, out.events, out.refusal) == (balance, [], None)
    assert again.corrected_offset == 50


def test_the_parts_of_one_correction_apply_in_turn() -> None:
    book, balance = opened(balance_cny=20_000)
    first = _rerate([_call("c1", 3000, 4000)], parts=2)
    second = _rerate([_call("c2", 3000, 3500)], part=1, parts=2)
    book, balance, _ = apply_command(book, balance, first, TERMS, offset=50)
    book, after, out = apply_command(book, balance, second, TERMS, offset=51)
    assert out.refusal is None and after == balance - 500
    assert book.corrections[CID][1] == [0, 1]


def test_a_correction_computed_before_another_was_applied_is_refused() -> None:
    book, balance = opened(balance_cny=20_000)
    book, balance, _ = apply_command(book, balance, _rerate([_call("c1", 3000, 4000)], based_on=40), TERMS, offset=50)
    stale = _rerate([_call("c1", 3000, 4000)], cid="ffeeddccbbaa9988", based_on=45)
    _, same, out = apply_command(book, balance, stale, TERMS, offset=52)
    assert same == balance and out.events == []
    assert "another correction was applied since (at offset 50)" in (out.refusal or "")
    fresh = _rerate([_call("c9", 3000, 4000)], cid="ffeeddccbbaa9988", based_on=51)
    assert apply_command(book, balance, fresh, TERMS, offset=60)[2].refusal is None


def test_a_correction_into_arrears_suspends_and_one_back_to_zero_reactivates() -> None:
    book, balance = opened(balance_cny=10_100)  # 10100 - 50 - 10000 = 50.00
    book, balance, out = apply_command(book, balance, _rerate([_call("c1", 0, 60 * CNY)]), TERMS, offset=50)
    assert balance == -10 * CNY and book.suspended
    assert [e.kind for e in out.events] == ["CallRerated", "AccountSuspended"]
    assert {status for _, status, _, _ in out.statuses} == {"blocked"}
    back = _rerate([_call("c1", 60 * CNY, 20 * CNY)], cid="ffeeddccbbaa9988", based_on=55)
    book, balance, out = apply_command(book, balance, back, TERMS, offset=56)
    assert balance == 30 * CNY and not book.suspended
    assert [e.kind for e in out.events] == ["CallRerated", "AccountReactivated"]


def test_an_open_months_usage_follows_the_correction_and_a_closed_months_does_not() -> None:
    book, balance = opened(balance_cny=20_000, when="2026-02-20T09:00:00+08:00")
    book.usage["2026-03"] = 40 * CNY
    book.closed_months.append("2026-02")
    command = _rerate([_call("c1", 1000, 3000), _call("c0", 1000, 500, day="2026-02-25")])
    book, balance, _ = apply_command(book, balance, command, TERMS, offset=50)
    assert book.usage == {"2026-03": 40 * CNY + 2000}


def test_the_book_forgets_a_correction_with_payment_references() -> None:
    book, balance = opened(balance_cny=20_000)
    book, balance, _ = apply_command(book, balance, _rerate([_call("c1", 3000, 4000)]), TERMS, offset=50)
    assert LEDGER_MEMORY_MONTHS == 13
    later = datetime(2027, 5, 3, 10, tzinfo=TERMS.plan.zone)
    book, balance, _ = apply_command(book, balance, LedgerCommand(
        kind="topup", account_id="A1", at=later, amount=CNY, ref="P9"), TERMS, offset=90)
    assert CID in book.corrections  # applied in April 2026: within 13 months of May 2027
    much_later = datetime(2027, 6, 3, 10, tzinfo=TERMS.plan.zone)
    book, _, _ = apply_command(book, balance, LedgerCommand(
        kind="topup", account_id="A1", at=much_later, amount=CNY, ref="P10"), TERMS, offset=91)
    assert CID not in book.corrections
    assert Book.from_json(book.to_json()) == book


def _state(latest_month: int) -> RatingState:
    empty = RatingState.empty()
    return RatingState(
        balances=empty.balances,
        allowance=pl.DataFrame({"account_id": ["A1"], "month_key": [24314], "allowance_used_s": [600]}),
        charged=pl.DataFrame({"account_id": ["A1"], "month_key": [24314], "class": ["local"], "charged_before_s": [120]}),
        daily=pl.DataFrame({"account_id": ["A1"], "local_day": [date(2026, 3, 12)], "spent_before": [5000],
                            "cap_alerted": [True]}),
        seen=empty.seen,
        latest=pl.DataFrame({"account_id": ["A1"], "latest_month": [latest_month]}),
    )


def test_the_months_within_the_horizon_take_the_calls_allowance_charged_and_spend_deltas() -> None:
    calls = [
        _call("c1", 3000, 1000, allowance_delta_s=60, charged_delta_s=-60),
        _call("c2", 0, 2500, day="2026-03-13", charged_delta_s=120),
        _call("c3", 100, 200, day="2026-01-05", charged_delta_s=6),  # out of the horizon: left alone
    ]
    days = [DayChange(local_day=date(2026, 3, 12), cap_alerted=False), DayChange(local_day=date(2026, 3, 13), cap_alerted=False)]
    state, months = corrected_state(_state(24315), "A1", calls, days, horizon_months=1)
    assert months == [24314]
    assert state.allowance.rows() == [("A1", 24314, 660)]
    assert state.charged.rows() == [("A1", 24314, "local", 180)]
    assert sorted(state.daily.rows()) == [("A1", date(2026, 3, 12), 3000, False), ("A1", date(2026, 3, 13), 2500, False)]


def test_a_correction_of_months_the_state_no_longer_holds_changes_nothing() -> None:
    before = _state(24318)
    state, months = corrected_state(before, "A1", [_call("c1", 3000, 1000, charged_delta_s=-60)], [], horizon_months=1)
    assert months == [] and state is before
