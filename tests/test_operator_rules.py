"""Issue 25: the rules a 400 operator must keep, without Kafka.

The fold (rating/ledger.py) and the rating agent's batch step (streams.worker.batch) over
small logs, cut into batches of every size: the unusual-bill alert, the arrears lifecycle,
the outage credit without rent, and number transfers. Amounts in units of 0.0001 CNY,
worked out by hand in the comments (CNY).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import pytest

from rating import Catalog, RatingState, rate
from rating.ledger import Book, Terms, apply_command
from schemas.cdr_csv import parse_csv
from schemas.invoices import InvoiceDocument, InvoiceRequest
from schemas.columns import CDR_HEADER
from schemas.ledger import LedgerCommand
from schemas.messages import cdr_chunk_value
from streams.worker.batch import BatchOutcome, rate_messages
from streams.worker.messages import SourceMessage
from streams.worker.sinks import read_output
from streams.worker.state_records import RecordFold
from tariffs import Account, Plan, Tariffs
from tariffs.models import Transfer
from tariffs.catalogue import CatalogueRules
from tariffs.tax import load_tax_rates
from tests.test_properties import _call

CNY = 10_000
TOPIC = "cdr.raw"
FLAT = {"segment": "*", "class": "*", "tiers": [{"per_minute": "1.00"}]}  # 1.00 a started minute


def _plan(**version: object) -> Plan:
    return Plan.model_validate({"id": "p", "versions": [
        {"effective_from": "2026-01-01T00:00:00+08:00", "rates": [FLAT], **version}]})


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# ---------------------------------------------------------------------------- a log


@dataclass
class Log:
    """Accounts' logs as the worker reads them: commands and call chunks, in order."""

    messages: list[SourceMessage] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)

    def _add(self, account: str, value: bytes) -> SourceMessage:
        partition = sum(account.encode()) % 3
        offset = self.offsets.get(partition, 0)
        self.offsets[partition] = offset + 1
        message = SourceMessage(account.encode(), partition, offset, value)
        self.messages.append(message)
        return message

    def command(self, account: str, kind: str, when: str, **fields: object) -> SourceMessage:
        command = LedgerCommand(kind=kind, account_id=account, at=_at(when), **fields)  # type: ignore[arg-type]
        return self._add(account, json.dumps(command.message_value()).encode())

    def calls(self, account: str, *lines: str, source: str = "calls.csv") -> SourceMessage:
        frame = parse_csv(("\n".join([CDR_HEADER, *lines]) + "\n").encode())
        return self._add(account, json.dumps(cdr_chunk_value(source, frame, "i1")).encode())

    def raw(self, account: str, value: bytes) -> SourceMessage:
        return self._add(account, value)


def _rate(log: Log, catalog: Catalog, batch_size: int, table: RecordFold | None = None) -> list[BatchOutcome]:
    table = RecordFold() if table is None else table
    outcomes = []
    for start in range(0, len(log.messages), batch_size):
        part = log.messages[start:start + batch_size]
        outcome = rate_messages(part, {m.key: table.accounts.get(m.key) for m in part}, catalog, TOPIC)
        for _, (_, records) in outcome.states.items():
            for key, value in records:
                table.apply(key, value)
        outcomes.append(outcome)
    return outcomes


def _out(outcomes: list[BatchOutcome], kind: str) -> pl.DataFrame:
    frames = [read_output(m.value, kind) for o in outcomes for m in o.outputs if m.kind == kind]  # type: ignore[arg-type]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _catalog(plan: Plan, *accounts: Account, rules: CatalogueRules | None = None) -> Catalog:
    return Catalog.from_tariffs(Tariffs(plans={plan.id: plan}, accounts=accounts, rules=rules or CatalogueRules()))


def _account(account_id: str, numbers: list[str], balance: str = "1000.00") -> Account:
    return Account.model_validate({"id": account_id, "plan": "p", "numbers": numbers, "opening_balance": balance,
                                   "opened_at": "2026-01-01T00:00:00+08:00"})


def _opened(log: Log, account: Account) -> None:
    log.command(account.id, "open", "2026-01-01T00:00:00+08:00", plan="p", numbers=account.numbers,
                opening_balance=account.opening_balance, imported=True)


# ---------------------------------------------------------------------------- unusual_spend

UNUSUAL = _plan()
SPENDER = _account("U1", ["4008000001"])


def _unusual_log() -> Log:
    # 100 minutes a month in January to March (100.00 each, closed), then April: 300, 150
    # (450.00: not above 5 x 100.00), 60 (510.00: above: the alert), 100 (no second one).
    log = Log()
    _opened(log, SPENDER)
    for month, close in (("01", "2026-02-01T00:10:00+08:00"), ("02", "2026-03-01T00:10:00+08:00"),
                         ("03", "2026-04-01T00:10:00+08:00")):
        log.calls("U1", _call(f"m{month}", "4008000001", f"2026-{month}-10T10:00:00+08:00", 6000))
        log.command("U1", "close_month", close, month=f"2026-{month}")
    log.calls("U1", _call("a1", "4008000001", "2026-04-05T10:00:00+08:00", 18_000),
              _call("a2", "4008000001", "2026-04-06T10:00:00+08:00", 9000))
    log.calls("U1", _call("a3", "4008000001", "2026-04-07T10:00:00+08:00", 3600),
              _call("a4", "4008000001", "2026-04-08T10:00:00+08:00", 6000))
    return log


@pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
def test_unusual_spend_is_raised_once_at_the_call_that_passes_five_times_the_three_months_before(batch_size: int) -> None:
    catalog = _catalog(UNUSUAL, SPENDER)
    alerts = _out(_rate(_unusual_log(), catalog, batch_size), "alerts")
    unusual = alerts.filter(pl.col("kind") == "unusual_spend")
    # 1000 - 3 x 100 - 300 - 150 - 60 = 190.00 after a3
    assert unusual.select("account_id", "cdr_id", "balance").rows() == [("U1", "a3", 190 * CNY)]


def test_unusual_spend_needs_three_closed_months_and_follows_the_catalogues_factor() -> None:
    log = _unusual_log()
    # Factor 6: 600.00 is not passed (610.00 is, at a4: 710.00 > 600.00).
    six = _out(_rate(log, _catalog(UNUSUAL, SPENDER, rules=CatalogueRules(unusual_spend_factor="6")), 100), "alerts")
    assert six.filter(pl.col("kind") == "unusual_spend").get_column("cdr_id").to_list() == ["a4"]
    off = _out(_rate(log, _catalog(UNUSUAL, SPENDER, rules=CatalogueRules(unusual_spend_factor=0)), 100), "alerts")
    assert off.height == 0
    # Without March's close only two months are closed: no basis, no alert.
    short = Log()
    for message in log.messages:
        value = json.loads(message.value)
        if value.get("ledger", {}).get("month") != "2026-03":
            short.raw("U1", message.value)
    alerts = _out(_rate(short, _catalog(UNUSUAL, SPENDER), 100), "alerts")
    assert alerts.height == 0


def test_a_month_close_charge_can_raise_unusual_spend() -> None:
    # Rent 100.00 and no calls in January to March; April's calls 450.00, then its rent:
    # 550.00 > 500.00 at the RentCharged event.
    plan = _plan(monthly_rent="100.00")
    log = Log()
    _opened(log, SPENDER)
    for month, close in (("01", "2026-02-01T00:10:00+08:00"), ("02", "2026-03-01T00:10:00+08:00"),
                         ("03", "2026-04-01T00:10:00+08:00"), ("04", "2026-05-01T00:10:00+08:00")):
        if month == "04":
            log.calls("U1", _call("a1", "4008000001", "2026-04-05T10:00:00+08:00", 27_000))
        log.command("U1", "close_month", close, month=f"2026-{month}")
    alerts = _out(_rate(log, _catalog(plan, SPENDER), 100), "alerts")
    assert alerts.filter(pl.col("kind") == "unusual_spend").select("cdr_id", "line").rows() == [
        ("U1/RentCharged/2026-04", 0)]


# ---------------------------------------------------------------------------- unusual_calls


def test_an_unusual_calls_burst_over_batches_smaller_than_its_count_is_seen_as_in_one() -> None:
    # Three local calls within 60 minutes: the third raises it, however the log is cut
    # (the state keeps an account's counted calls while it has fewer than count).
    rules = CatalogueRules.model_validate({"unusual_calls": {"count": 3, "window_minutes": 60, "classes": ["local"]}})
    catalog = _catalog(UNUSUAL, SPENDER, rules=rules)
    lines = [_call(f"b{i}", "4008000001", f"2026-04-05T10:{10 * i:02d}:00+08:00", 60) for i in range(3)]
    batch = parse_csv(("\n".join([CDR_HEADER, *lines]) + "\n").encode())
    whole = rate(batch, RatingState.empty(), catalog).alerts
    state, pieces = RatingState.empty(), []
    for row in range(batch.height):
        result = rate(batch[row:row + 1], state, catalog)
        state = result.state
        pieces.append(result.alerts)
    for alerts in (whole, pl.concat(pieces)):
        assert alerts.filter(pl.col("kind") == "unusual_calls").get_column("cdr_id").to_list() == ["b2"]


# ---------------------------------------------------------------------------- arrears lifecycle

ARREARS = _plan(monthly_rent="0", frozen_after_days=30, reclaim_after_days=60)
TERMS = Terms("D1", ARREARS, low_balance_threshold=0)


def _run(book: Book, balance: int, kind: str, when: str, **fields: object):
    command = LedgerCommand(kind=kind, account_id="D1", at=_at(when), **fields)  # type: ignore[arg-type]
    return apply_command(book, balance, command, TERMS)


def _in_arrears() -> tuple[Book, int]:
    # Opened on 1 March with nothing to pay its 50.00 opening fee: suspended at once,
    # frozen 31 March, its numbers released 30 April.
    book, balance, out = _run(Book(), 0, "open", "2026-03-01T00:00:00+08:00", plan="p",
                              numbers=["4008000002", "4008000003"], opening_fee=50 * CNY)
    assert book.shown_state() == "suspended"
    assert "AccountSuspended" in [e.kind for e in out.events]
    return book, balance


def test_a_suspended_account_is_frozen_then_loses_its_numbers_at_the_stated_days() -> None:
    book, balance = _in_arrears()
    assert book.next_step() == ("frozen", _at("2026-03-31T00:00:00+08:00"))
    book, balance, out = _run(book, balance, "topup", "2026-03-20T00:00:00+08:00", amount=10 * CNY, ref="P1")
    assert book.shown_state() == "suspended"  # 40.00 still owed
    book, balance, out = _run(book, balance, "close_month", "2026-04-01T00:10:00+08:00", month="2026-03")
    # the deadline first, then the close (issue 24's MonthClosed, no money)
    assert [(e.kind, e.at) for e in out.events] == [
        ("NumberFrozen", _at("2026-03-31T00:00:00+08:00")), ("MonthClosed", _at("2026-03-31T23:59:59.999999+08:00"))]
    assert [s[1] for s in out.statuses] == ["blocked", "blocked"]
    assert (book.shown_state(), book.next_step()) == ("frozen", ("released", _at("2026-04-30T00:00:00+08:00")))
    book, balance, out = _run(book, balance, "close_month", "2026-05-01T00:10:00+08:00", month="2026-04")
    assert [(e.kind, e.reference) for e in out.events] == [
        ("NumberReleased", "4008000002"), ("NumberReleased", "4008000003"), ("AccountClosed", ""),
        ("MonthClosed", "2026-04")]
    assert all(e.at == _at("2026-04-30T00:00:00+08:00") for e in out.events[:3])
    assert [s[:2] for s in out.statuses] == [("4008000002", "released"), ("4008000003", "released")]
    assert (book.shown_state(), balance, book.next_step(), book.numbers) == ("closed", -40 * CNY, None, [])


def test_paying_back_a_frozen_account_restores_it_before_its_numbers_are_released() -> None:
    book, balance = _in_arrears()
    book, balance, _ = _run(book, balance, "close_month", "2026-04-01T00:10:00+08:00", month="2026-03")
    book, balance, out = _run(book, balance, "topup", "2026-04-10T00:00:00+08:00", amount=60 * CNY, ref="P2")
    assert [e.kind for e in out.events] == ["TopUpReceived", "AccountReactivated"]
    assert [s[1] for s in out.statuses] == ["active", "active"]
    assert (book.shown_state(), book.next_step(), balance) == ("active", None, 10 * CNY)


def test_without_the_days_a_suspension_lasts_until_paid_as_before() -> None:
    terms = Terms("D1", _plan(), low_balance_threshold=0)
    book, balance, _ = apply_command(Book(), 0, LedgerCommand(
        kind="open", account_id="D1", at=_at("2026-03-01T00:00:00+08:00"), plan="p", numbers=["4008000002"],
        opening_fee=50 * CNY), terms)
    assert (book.shown_state(), book.next_step(), book.arrears) == ("suspended", None, None)


@pytest.mark.parametrize("batch_size", [1, 2, 100])
def test_calls_of_a_frozen_account_are_inactive_and_of_a_released_number_unknown(batch_size: int) -> None:
    debtor = Account.model_validate({"id": "D1", "plan": "p", "numbers": ["4008000002"], "opening_balance": "0",
                                     "opened_at": "2026-03-01T00:00:00+08:00"})
    log = Log()
    log.command("D1", "open", "2026-03-01T00:00:00+08:00", plan="p", numbers=["4008000002"],
                opening_fee=50 * CNY)
    log.calls("D1", _call("s1", "4008000002", "2026-03-15T10:00:00+08:00", 60),    # suspended: rated
              _call("f1", "4008000002", "2026-04-05T10:00:00+08:00", 60))          # frozen (scheduled)
    log.command("D1", "close_month", "2026-05-01T00:10:00+08:00", month="2026-04")  # frozen, then released
    log.calls("D1", _call("f2", "4008000002", "2026-04-20T10:00:00+08:00", 60),    # frozen
              _call("r1", "4008000002", "2026-05-02T10:00:00+08:00", 60))          # released
    outcomes = _rate(log, _catalog(ARREARS, debtor), batch_size)
    assert _out(outcomes, "rated").get_column("cdr_id").to_list() == ["s1"]
    rejected = _out(outcomes, "rejected").sort("cdr_id")
    assert rejected.select("cdr_id", "reason", "account_id").rows() == [
        ("f1", "account_inactive", "D1"), ("f2", "account_inactive", "D1"), ("r1", "unknown_number", None)]
    balances = _out(outcomes, "balances")
    last = balances.filter(pl.col("version") == balances.get_column("version").max())
    assert last.select("state", "next_step").row(0) == ("closed", "")


def test_account_balances_say_when_the_next_step_falls_due() -> None:
    debtor = _account("D1", ["4008000002"], balance="0")
    log = Log()
    log.command("D1", "open", "2026-03-01T00:00:00+08:00", plan="p", numbers=["4008000002"],
                opening_fee=50 * CNY)
    row = _out(_rate(log, _catalog(ARREARS, debtor), 10), "balances").row(0, named=True)
    assert (row["state"], row["next_step"], row["next_step_at"]) == ("suspended", "frozen", "2026-03-31T00:00:00+08:00")


# ---------------------------------------------------------------------------- outage credit


@pytest.mark.parametrize(
    ("version", "day_credit"),
    [
        ({"monthly_rent": "310.00"}, 10 * CNY),  # rent: 310.00 / 31
        ({"minimum_monthly_spend": "310.00"}, 0),  # a floor, but the rent base: nothing
        ({"minimum_monthly_spend": "310.00", "sla_credit_base": "floor"}, 10 * CNY),
        ({"minimum_monthly_spend": "155.00", "minimum_scope": "number", "sla_credit_base": "floor"}, 10 * CNY),
        # 3720.00 over 12 months of a 31-day month: 10.00 a day
        ({"package": {"price": "3720.00", "term_months": 12}, "sla_credit_base": "package"}, 10 * CNY),
    ],
)
def test_an_outage_credits_a_day_of_the_rent_floor_or_package(version: dict, day_credit: int) -> None:
    plan = _plan(**version)
    terms = Terms("A1", plan, low_balance_threshold=0)
    book, balance, out = apply_command(Book(), 0, LedgerCommand(
        kind="open", account_id="A1", at=_at("2026-01-01T00:00:00+08:00"), plan="p",
        numbers=["4008000001", "4008000002"], opening_balance=5000 * CNY, imported=True), terms)
    assert out.refusal is None
    book, after, out = apply_command(book, balance, LedgerCommand(
        kind="sla_credit", account_id="A1", at=_at("2026-03-06T04:00:00+08:00"),
        start=_at("2026-03-05T21:00:00+08:00"), end=_at("2026-03-06T04:00:00+08:00")), terms)
    # 21:00-24:00 is 180 min, 00:00-04:00 is 240 min: both above 120 min, two days
    assert after - balance == 2 * day_credit
    assert [e.kind for e in out.events] == (["SlaCreditGranted"] * 2 if day_credit else [])


# ---------------------------------------------------------------------------- number transfer

OLD = _account("OLD", ["4008000001", "4008000009"], balance="100.00")
NEW = _account("NEW", ["4008000005"], balance="50.00")
MOVED = "4008000001"


def _transfer_log(*, close_february: bool = True, owe: bool = False) -> Log:
    log = Log()
    _opened(log, OLD)
    _opened(log, NEW)
    log.calls("OLD", _call("o1", MOVED, "2026-03-05T10:00:00+08:00", 60))  # 1.00: OLD's
    if owe:
        log.calls("OLD", _call("o2", MOVED, "2026-03-06T10:00:00+08:00", 6000))  # 100.00: -1.00
    if close_february:
        log.command("OLD", "close_month", "2026-03-01T00:10:00+08:00", month="2026-02")
    log.command("OLD", "transfer_out", "2026-03-10T00:00:00+08:00", number=MOVED, counterpart="NEW")
    log.command("NEW", "transfer_in", "2026-03-10T00:00:00+08:00", number=MOVED, counterpart="OLD")
    # A late call (charged before the instant) routed to OLD, a call after it routed to
    # OLD before every feed knew (forwarded), one routed to NEW.
    log.calls("OLD", _call("o3", MOVED, "2026-03-08T10:00:00+08:00", 120),
              _call("x1", MOVED, "2026-03-12T10:00:00+08:00", 180))
    log.calls("NEW", _call("n1", MOVED, "2026-03-15T10:00:00+08:00", 240))
    return log


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_a_transfer_bills_calls_before_it_to_the_old_account_and_after_it_to_the_new(batch_size: int) -> None:
    catalog = _catalog(_plan(), OLD, NEW)
    log = _transfer_log()
    table = RecordFold()
    outcomes = _rate(log, catalog, batch_size, table)
    events = _out(outcomes, "ledger").filter(pl.col("kind") == "NumberTransferred")
    assert events.select("account_id", "reference", "transferred_to").sort("account_id").rows() == [
        ("NEW", MOVED, ""), ("OLD", MOVED, "NEW")]
    rated = _out(outcomes, "rated")
    assert sorted(rated.select("cdr_id", "account_id").rows()) == [("n1", "NEW"), ("o1", "OLD"), ("o3", "OLD")]
    # x1 was routed to OLD's log: OLD's worker sends it to NEW's log, once.
    forwards = [m for o in outcomes for m in o.outputs if m.kind == "forward"]
    assert [(m.key, json.loads(m.value)["cdr_id"]) for m in forwards] == [(b"NEW", ["x1"])]
    # NEW's log gets it (twice: a replay of OLD's batch sent it again); it is rated once, as NEW's.
    more = Log(offsets=dict(log.offsets))
    more.raw("NEW", forwards[0].value)
    more.raw("NEW", forwards[0].value)
    again = _rate(more, catalog, 1, table)
    assert _out(again, "rated").select("cdr_id", "account_id", "amount", "line").rows() == [("x1", "NEW", 3 * CNY, 3)]
    assert sum(o.skipped for o in again) == 1 and _out(again, "rejected").height == 0


def test_a_transfer_is_refused_while_the_old_account_owes_or_a_month_is_not_closed() -> None:
    catalog = _catalog(_plan(), OLD, NEW)
    for log, why in ((_transfer_log(owe=True), "owes"), (_transfer_log(close_february=False), "2026-02")):
        outcomes = _rate(log, catalog, 100)
        refused = _out(outcomes, "rejected").filter(pl.col("reason") == "ledger_refused")
        assert refused.get_column("cdr_id").to_list() == [f"transfer_out/{MOVED}/2026-03-10T00:00:00+08:00"]
        assert why in refused.get_column("detail")[0]
        # The old account keeps the number: x1 is billed to it, nothing is forwarded
        rated = dict(_out(outcomes, "rated").select("cdr_id", "account_id").rows())
        assert rated["x1"] == "OLD"
        assert not [m for o in outcomes for m in o.outputs if m.kind == "forward"]


def test_the_engine_rates_a_line_as_the_account_it_was_routed_to() -> None:
    # The worker's lines carry their message's key: a replay with a later catalogue gives
    # the same account; offline (no key) the number decides, by its owner at charge time.
    catalog = _catalog(_plan(), OLD, NEW)
    batch = parse_csv(("\n".join([CDR_HEADER, _call("k1", MOVED, "2026-03-12T10:00:00+08:00", 60)]) + "\n").encode())
    offline = rate(batch, RatingState.empty(), catalog).rated.get_column("account_id").to_list()
    routed = rate(batch.with_columns(routed_account=pl.lit("NEW")), RatingState.empty(), catalog).rated
    assert offline == ["OLD"] and routed.get_column("account_id").to_list() == ["NEW"]
    nobody = rate(batch.with_columns(routed_account=pl.lit("NOPE")), RatingState.empty(), catalog).rejected
    assert nobody.get_column("reason").to_list() == ["unknown_number"]


def test_accounts_files_refuse_transfers_that_do_not_follow_each_other(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tariffs import TariffError, load_tariffs

    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.toml").write_text(
        'id = "p"\n[[versions]]\neffective_from = 2026-01-01T00:00:00+08:00\n')
    accounts = tmp_path / "accounts.toml"
    base = ('[[accounts]]\nid = "A"\nplan = "p"\nnumbers = []\n'
            '[[accounts]]\nid = "B"\nplan = "p"\nnumbers = ["4008000001"]\n')
    accounts.write_text(base + '[[transfers]]\nnumber = "4008000001"\nfrom = "A"\nto = "B"\nat = 2026-04-01T00:00:00+08:00\n')
    tariffs = load_tariffs(tmp_path / "plans", accounts)
    assert tariffs.account_of_number() == {"4008000001": "B"}
    assert [owner for _, owner in tariffs.owners()["4008000001"]] == ["A", "B"]
    accounts.write_text(base + '[[transfers]]\nnumber = "4008000001"\nfrom = "B"\nto = "A"\nat = 2026-04-01T00:00:00+08:00\n')
    with pytest.raises(TariffError, match="must list it"):
        load_tariffs(tmp_path / "plans", accounts)


def test_the_transfer_command_names_a_number_and_another_account() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="a transfer needs"):
        LedgerCommand(kind="transfer_out", account_id="OLD", at=_at("2026-03-10T00:00:00+08:00"), number="12",
                      counterpart="NEW")
    command = LedgerCommand(kind="transfer_in", account_id="NEW", at=_at("2026-03-10T00:00:00+08:00"), number=MOVED,
                            counterpart="OLD")
    assert command.command_id == f"transfer_in/{MOVED}/2026-03-10T00:00:00+08:00"



def test_the_feeds_route_a_transferred_number_by_the_calls_charge_time() -> None:
    from rating.ownership import routing_of
    from streams.feeds.routing import route

    tariffs = Tariffs(plans={"p": _plan()}, accounts=(OLD, NEW), transfers=(
        Transfer.model_validate({"number": MOVED, "from": "OLD", "to": "NEW", "at": "2026-03-10T00:00:00+08:00"}),))
    lines = [_call("r1", MOVED, "2026-03-09T23:59:59+08:00", 60), _call("r2", MOVED, "2026-03-10T00:00:00+08:00", 60),
             _call("r3", "4008000009", "2026-03-12T10:00:00+08:00", 60)]
    batch = parse_csv(("\n".join([CDR_HEADER, *lines]) + "\n").encode())
    routed = route(batch, routing_of(tariffs), source="f.csv", ingest_id="i1")
    assert routed.accepted.select("cdr_id", "account_id").rows() == [("r1", "OLD"), ("r2", "NEW"), ("r3", "OLD")]
    # A plain map (no owners over time) routes by the number's account now, as before.
    plain = route(batch, tariffs.account_of_number(), source="f.csv", ingest_id="i1")
    assert plain.accepted.get_column("account_id").to_list() == ["NEW", "NEW", "OLD"]


def test_a_transferred_number_as_a_switch_writes_it_is_normalised_then_routed_by_charge_time() -> None:
    # issue 21 reads "+86 400-800-0001" as 4008000001 (and stamps read_at); the owner at
    # the charge time is then looked up by that number, on the feeds' and the engine's path.
    from rating.ownership import routing_of
    from schemas.switch_formats import PROFILES_DIR, Feed
    from streams.cdr_files import stamped
    from streams.feeds.routing import route

    tariffs = Tariffs(plans={"p": _plan()}, accounts=(OLD, NEW), transfers=(
        Transfer.model_validate({"number": MOVED, "from": "OLD", "to": "NEW", "at": "2026-03-10T00:00:00+08:00"}),))
    feed = Feed.of("mapped", profile=PROFILES_DIR / "platform-400-export.toml")
    header = "话单编号,主叫号码,400号码,接听号码,呼叫时间,接通时间,挂机时间,通话时长,呼叫结果".encode("gbk")
    lines = "".join(
        f"{cdr_id}, 13800138000, {called}, 01088886666, {day} 09:00:00, {day} 09:00:05, {day} 09:01:05, 00:01:00, 已接通\n"
        for cdr_id, called, day in (("s1", "+86 400-800-0001", "2026-03-09"), ("s2", "0086 4008000001", "2026-03-12"),
                                    ("s3", "04008000001", "2026-03-12"))
    ).encode("gbk")
    read_at = datetime.fromisoformat("2026-03-13T00:00:00+08:00")
    batch = stamped(feed.layout(header).parse(lines, 1), read_at)
    assert batch.get_column("called").to_list() == [MOVED] * 3
    routed = route(batch, routing_of(tariffs), source="export.csv", ingest_id="i1")
    assert routed.accepted.select("cdr_id", "account_id").rows() == [("s1", "OLD"), ("s2", "NEW"), ("s3", "NEW")]
    assert routed.accepted.get_column("read_at").to_list() == [read_at.astimezone(UTC)] * 3
    # read after the calls: all three are rated (none past the time bounds), each as its owner's
    offline = rate(batch, RatingState.empty(), Catalog.from_tariffs(tariffs)).rated
    assert offline.select("cdr_id", "account_id", "status").rows() == [
        ("s1", "OLD", "rated"), ("s2", "NEW", "rated"), ("s3", "NEW", "rated")]


# ---------------------------------------------------------------------------- with invoices (issue 24)

TAX = load_tax_rates()


def _document(events: list) -> InvoiceDocument:  # type: ignore[type-arg]
    (issued,) = [e for e in events if e.kind == "InvoiceIssued"]
    return InvoiceDocument.model_validate_json(issued.document)


def _invoice(book: Book, balance: int, terms: Terms, month: str, sequence: int, when: str) -> InvoiceDocument:
    request = InvoiceRequest(kind="invoice", sequence=sequence, month=month, table=TAX)
    command = LedgerCommand(kind="invoice", account_id=terms.account_id, at=_at(when), document=request)
    _, _, out = apply_command(book, balance, command, terms)
    assert out.refusal is None
    return _document(out.events)


def test_a_frozen_then_closed_accounts_months_are_invoiced_naming_the_numbers_it_held() -> None:
    book, balance = _in_arrears()
    book, balance, _ = _run(book, balance, "close_month", "2026-04-01T00:10:00+08:00", month="2026-03")
    assert book.shown_state() == "frozen"
    march = _invoice(book, balance, TERMS, "2026-03", 1, "2026-04-02T10:00:00+08:00")
    assert [(line.kind, line.gross) for line in march.lines] == [("opening_fee", 50 * CNY)]
    # April's close reclaims the numbers (30 April) and closes the account; both months
    # still invoice, naming the numbers it held then.
    book, balance, _ = _run(book, balance, "close_month", "2026-05-01T00:10:00+08:00", month="2026-04")
    assert (book.shown_state(), book.numbers) == ("closed", [])
    for month in ("2026-03", "2026-04"):
        document = _invoice(book, balance, TERMS, month, 2, "2026-05-02T10:00:00+08:00")
        assert document.buyer.numbers == ["4008000002", "4008000003"]


def test_an_invoice_names_the_numbers_held_in_its_month_across_a_transfer() -> None:
    plan = _plan()
    old, new = Terms("OLD", plan, low_balance_threshold=0), Terms("NEW", plan, low_balance_threshold=0)
    books = {}
    for terms, account in ((old, OLD), (new, NEW)):
        book, balance, _ = apply_command(Book(), 0, LedgerCommand(
            kind="open", account_id=terms.account_id, at=_at("2026-01-01T00:00:00+08:00"), plan="p",
            numbers=account.numbers, opening_balance=100 * CNY, opening_fee=CNY), terms)
        books[terms.account_id] = (book, balance)
    steps = [(old, "close_month", "2026-02-01T00:10:00+08:00", {"month": "2026-01"}),
             (new, "close_month", "2026-02-01T00:10:00+08:00", {"month": "2026-01"}),
             (old, "close_month", "2026-03-01T00:10:00+08:00", {"month": "2026-02"}),
             (old, "transfer_out", "2026-03-10T00:00:00+08:00", {"number": MOVED, "counterpart": "NEW"}),
             (new, "transfer_in", "2026-03-10T00:00:00+08:00", {"number": MOVED, "counterpart": "OLD"}),
             (new, "close_month", "2026-03-15T00:10:00+08:00", {"month": "2026-02"}),
             (old, "close_month", "2026-04-01T00:10:00+08:00", {"month": "2026-03"}),
             (new, "close_month", "2026-04-01T00:10:00+08:00", {"month": "2026-03"})]
    for terms, kind, when, fields in steps:
        book, balance = books[terms.account_id]
        book, balance, out = apply_command(book, balance, LedgerCommand(
            kind=kind, account_id=terms.account_id, at=_at(when), **fields), terms)  # type: ignore[arg-type]
        assert out.refusal is None
        books[terms.account_id] = (book, balance)
    # January: both as opened; March: the number is on both (each held it part of the month)
    held = {(account, month): _invoice(*books[terms.account_id], terms, month, 1, "2026-04-02T10:00:00+08:00").buyer.numbers
            for terms, account in ((old, "OLD"), (new, "NEW")) for month in ("2026-01", "2026-03")}
    assert held == {("OLD", "2026-01"): [MOVED, "4008000009"], ("OLD", "2026-03"): [MOVED, "4008000009"],
                    ("NEW", "2026-01"): ["4008000005"], ("NEW", "2026-03"): ["4008000005", MOVED]}
    # April (closed too) is the old account's without it
    book, balance = books["OLD"]
    book, balance, _ = apply_command(book, balance, LedgerCommand(
        kind="close_month", account_id="OLD", at=_at("2026-05-01T00:10:00+08:00"), month="2026-04"), old)
    assert _invoice(book, balance, old, "2026-04", 2, "2026-05-02T10:00:00+08:00").buyer.numbers == ["4008000009"]


def test_month_closes_and_invoices_move_no_spend_and_raise_no_unusual_spend() -> None:
    # The unusual_spend log with each close followed by its month's invoice: the same alert
    # at the same call (MonthClosed and InvoiceIssued move no money: not charges).
    log = Log()
    sequence = 0
    for message in _unusual_log().messages:
        log.raw("U1", message.value)
        command = json.loads(message.value).get("ledger", {})
        if command.get("kind") == "close_month":
            sequence += 1
            request = InvoiceRequest(kind="invoice", sequence=sequence, month=command["month"], table=TAX)
            log.command("U1", "invoice", f"{_next_month(command['month'])}-02T10:00:00+08:00", document=request)
    outcomes = _rate(log, _catalog(UNUSUAL, SPENDER), 100)
    events = _out(outcomes, "ledger")
    assert events.filter(pl.col("kind") == "InvoiceIssued").height == 3
    assert events.filter(pl.col("kind") == "MonthClosed").height == 3
    alerts = _out(outcomes, "alerts")
    assert alerts.filter(pl.col("kind") == "unusual_spend").select("cdr_id", "balance").rows() == [("a3", 190 * CNY)]


def _next_month(month: str) -> str:
    year, number = int(month[:4]), int(month[5:])
    return f"{year + number // 12:04d}-{number % 12 + 1:02d}"


# ---------------------------------------------------------------------------- tariff notice

VERSION_ONE = 'id = "p"\n[[versions]]\neffective_from = 2026-01-01T00:00:00+08:00\n'


def _folder(tmp_path, *versions: str, catalogue: str | None = None):  # type: ignore[no-untyped-def]
    from tariffs import load_tariffs

    plans = tmp_path / "plans"
    plans.mkdir(exist_ok=True)
    (plans / "p.toml").write_text(VERSION_ONE + "".join(versions))
    if catalogue is not None:
        (plans / "catalogue.toml").write_text(catalogue)
    accounts = tmp_path / "accounts.toml"
    accounts.write_text('[[accounts]]\nid = "A"\nplan = "p"\nnumbers = ["4008000001"]\n')
    return load_tariffs(plans, accounts)


def _version(effective: str, published: str | None = None) -> str:
    text = f"[[versions]]\neffective_from = {effective}\n"
    return text + (f"published_at = {published}\n" if published else "")


def test_a_version_published_with_less_than_the_catalogues_notice_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tariffs.notice import coming_changes, short_notices

    # 29 days of notice: short; 30: enough; none given: not judged; the plan's first
    # version (published the day it takes effect) is no change for anyone.
    tariffs = _folder(
        tmp_path,
        _version("2026-05-01T00:00:00+08:00", "2026-04-02T00:00:00+08:00"),
        _version("2026-06-01T00:00:00+08:00", "2026-05-02T00:00:00+08:00"),
        _version("2026-07-01T00:00:00+08:00"),
    )
    problems = short_notices(tariffs)
    assert len(problems) == 1 and "versions[1] (effective_from 2026-05-01T00:00:00+08:00)" in problems[0]
    assert "29 days of notice" in problems[0] and "p.toml" in problems[0]
    strict = _folder(tmp_path, _version("2026-06-01T00:00:00+08:00", "2026-05-02T00:00:00+08:00"),
                     catalogue="notice_days = 45\n")
    assert len(short_notices(strict)) == 1
    changes = coming_changes(tariffs, datetime.fromisoformat("2026-04-20T00:00:00+08:00"), 45)
    assert [(c.effective_from.month, c.notice_days, c.accounts) for c in changes] == [(5, 29, ("A",)), (6, 30, ("A",))]


def test_bad_catalogue_rules_and_published_tariffs_are_refused_naming_the_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tariffs import TariffError

    with pytest.raises(TariffError, match=r"catalogue.toml: unusual_calls > count"):
        _folder(tmp_path, catalogue="[unusual_calls]\ncount = 1\n")
    with pytest.raises(TariffError, match="unusual_spend_factor must be an integer or a decimal string"):
        _folder(tmp_path, catalogue="unusual_spend_factor = 2.5\n")
    assert _folder(tmp_path, catalogue='unusual_spend_factor = "2.5"\n').rules.unusual_spend_percent == 250
    with pytest.raises(TariffError, match="a tariff is published before it takes effect"):
        _folder(tmp_path, _version("2026-05-01T00:00:00+08:00", "2026-05-02T00:00:00+08:00"), catalogue="")
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="reclaim_after_days"):
        Plan.model_validate({"id": "p", "versions": [{"effective_from": "2026-01-01T00:00:00+08:00",
                                                      "frozen_after_days": 90, "reclaim_after_days": 30}]})
