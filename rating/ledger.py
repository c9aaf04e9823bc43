"""The ledger fold (spec/ledger.md): an account's book, and what each command does to it.

Pure: commands and the book in, events, alerts and number statuses out. Ledger commands
are few (a handful per account and month), so this is plain Python over one account at a
time; the calls between them are rated by ``rating.rate`` (the agent splits a batch at
each account's commands, ``streams.worker.batch``).

The book is JSON-ready (the worker keeps it in the account's table value, beside the
rating state). Rules the spec leaves open are in docs/rules.md ("Ledger").
"""

from __future__ import annotations

import calendar
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Final
from zoneinfo import ZoneInfo

from rating import invoicing
from rating.catalog import _version_for_period
from rating.tiers import round_half_up
from schemas.invoices import format_fen
from schemas.ledger import LedgerCommand, LedgerEvent, fixed_offset
from tariffs import Plan, PlanVersion
from tariffs.models import add_months

NOTICE: Final = timedelta(days=30)
FROZEN: Final = timedelta(days=90)
KEEP_MONTHS_MAX: Final[int] = 36
REFUND_WORKING_DAYS: Final[int] = 45
#: lifecycle states in which an account's numbers take no calls (CDRs: account_inactive)
INACTIVE: Final = frozenset({"kept", "frozen", "closed"})
_MICRO: Final = timedelta(microseconds=1)
#: Months of payment references, month closes and SLA days the book holds before the
#: month of the command it folds: a bank statement's reach (a reference older than
#: that is checked against ClickHouse by the CLI; docs/rules.md).
LEDGER_MEMORY_MONTHS: Final[int] = 13
#: Ledger charges that count as a month's charges for unusual_spend (issue 25), besides
#: its calls: the recurring and usage charges (not opening fees, package purchases, refunds).
SPEND_KINDS: Final = frozenset(
    {"RentCharged", "ServiceFeeCharged", "MinimumSpendTrueUp", "KeepNumberFeeCharged", "EarlyTerminationCharged"}
)
#: Months of unusual_spend's basis: the closed whole months before the month judged.
SPEND_BASIS_MONTHS: Final[int] = 3
#: Forwarded chunk ids a log remembers (a copy follows its original within seconds).
FORWARDS_KEPT: Final[int] = 32


def _json_copy(value: Any) -> Any:
    """A deep copy of a JSON value (dicts, lists and scalars).

    >>> original = {"a": [[1, "x"]], "b": {"c": None}}
    >>> copied = _json_copy(original)
    >>> copied == original, copied["a"] is original["a"], copied["a"][0] is original["a"][0]
    (True, False, False)
    """
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_copy(item) for item in value]
    return value


@dataclass
class Book:
    """One account's ledger state (``to_json`` / ``from_json`` for the table value).

    ``lifecycle`` lists (state, instant) transitions in time order, ``services`` the
    [from, to) intervals of each service (to ``None``: still on).
    """

    plan_id: str = ""
    numbers: list[str] = field(default_factory=list)
    opened_at: str | None = None
    lifecycle: list[list[str]] = field(default_factory=list)
    suspended: bool = False
    services: dict[str, list[list[str | None]]] = field(default_factory=dict)
    topups: dict[str, int] = field(default_factory=dict)
    closed_months: list[str] = field(default_factory=list)
    sla_days: list[str] = field(default_factory=list)
    #: the month's CallRated amounts, by local month "YYYY-MM" (minimum spend)
    usage: dict[str, int] = field(default_factory=dict)
    #: the notice ended: refund at the close of its month, after that month's charges
    refund_due: bool = False
    #: the refund found a negative balance: it is paid once a credit brings it back
    refund_pending: bool = False
    #: ledger events this account's log produced so far (a command waits for them to land)
    event_count: int = 0
    #: the month of each payment reference, so that old ones can be forgotten
    topup_months: dict[str, str] = field(default_factory=dict)
    #: "YYYY-MM": the book no longer holds what is older (LEDGER_MEMORY_MONTHS); a month
    #: close or SLA credit before it counts as recorded
    forgotten_before: str = ""
    #: correction id -> [month it was applied in, parts applied] (schemas.corrections)
    corrections: dict[str, list[Any]] = field(default_factory=dict)
    #: the log offset of the last correction part applied (-1: none): a correction
    #: computed from the log before it is stale and refused
    corrected_offset: int = -1
    #: the month's CallRated amounts per 400 number (floors per number, issue 23)
    number_usage: dict[str, dict[str, int]] = field(default_factory=dict)
    #: service -> the month "YYYY-MM" it was last charged (yearly and one-off fees)
    service_charged: dict[str, str] = field(default_factory=dict)
    #: charges waiting for an invoice or a note, and the documents issued (rating.invoicing)
    billing: dict[str, Any] = field(default_factory=dict)
    # issue 25 -----------------------------------------------------------------------
    #: the arrears lifecycle of a suspension: {"since", "frozen_at", "release_at"} (ISO
    #: 8601; the last two None when the plan sets no such days); None: not in arrears
    arrears: dict[str, str | None] | None = None
    #: why the account is frozen: "arrears", or "" (a cancellation's 90 days)
    frozen_for: str = ""
    #: number -> the instant it was released (reclaimed or closed): its calls from then
    #: on are no account's (unknown_number)
    released: dict[str, str] = field(default_factory=dict)
    #: number -> [[to account, since, until or None], ...]: when a number this account
    #: gave away was another's (its calls then are forwarded to that account's log)
    away: dict[str, list[list[str | None]]] = field(default_factory=dict)
    #: ids of the forwarded chunks this log took (a second copy is skipped), the last ones
    forwards: list[str] = field(default_factory=list)
    #: the charges of each open month so far (calls and fees: unusual_spend)
    spend: dict[str, int] = field(default_factory=dict)
    #: the charges of each closed whole active month: the unusual_spend basis
    spend_closed: dict[str, int] = field(default_factory=dict)
    #: months an unusual_spend alert was raised in (once per month)
    unusual_months: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> Book:
        # A deep copy: the value may be the worker's decoded record, which a fold must not
        # change (a batch whose state is not written leaves it as it was). A JSON tree
        # needs no memo: _json_copy is 3x faster than copy.deepcopy (one per account and batch).
        return cls(**{k: _json_copy(v) for k, v in (value or {}).items() if k in cls.__dataclass_fields__})

    def forget_before(self, month: str) -> None:
        """Drop what no command can still need: the usage of closed months, and month
        closes, SLA days and payment references older than ``month`` ("YYYY-MM").

        Keeps the book (a part of the worker's state, rewritten with every batch of the
        account) bounded by time rather than by the account's age (docs/rules.md).
        """
        if month <= self.forgotten_before:
            return
        self.forgotten_before = month
        self.usage = {m: v for m, v in self.usage.items() if m >= month and m not in self.closed_months}
        self.number_usage = {
            m: v for m, v in self.number_usage.items() if m >= month and m not in self.closed_months
        }
        self.closed_months = [m for m in self.closed_months if m >= month]
        self.sla_days = [d for d in self.sla_days if d[:7] >= month]
        old = [ref for ref, at in self.topup_months.items() if at < month]
        for ref in old:
            self.topups.pop(ref, None)
            self.topup_months.pop(ref, None)
        self.corrections = {cid: entry for cid, entry in self.corrections.items() if entry[0] >= month}
        invoicing.forget(self.billing, month)
        self.spend = {m: v for m, v in self.spend.items() if m >= month}
        self.spend_closed = {m: v for m, v in self.spend_closed.items() if m >= month}
        self.unusual_months = [m for m in self.unusual_months if m >= month]

    def remembers(self, month: str) -> bool:
        """Whether the book still holds what happened in ``month`` ("YYYY-MM")."""
        return month >= self.forgotten_before

    # ------------------------------------------------------------------ lifecycle
    def state_at(self, instant: datetime) -> str | None:
        """The lifecycle state at ``instant`` (None: not open yet)."""
        state = None
        for name, at in self.lifecycle:
            if _instant(at) <= instant:
                state = name
            else:
                break
        return state

    @property
    def current(self) -> str | None:
        return self.lifecycle[-1][0] if self.lifecycle else None

    def shown_state(self) -> str:
        """active | suspended | kept | cancelling | frozen | closed (``account show``)."""
        state = self.current or "closed"
        return "suspended" if self.suspended and state in ("active", "cancelling") else state

    def inactive_periods(self) -> list[tuple[datetime, datetime | None]]:
        """When the numbers take no calls: kept, frozen or closed, scheduled ones included."""
        periods: list[tuple[datetime, datetime | None]] = []
        transitions = [(name, _instant(at)) for name, at in self.lifecycle]
        step = self.next_step()
        if step is not None and step[0] == "frozen":  # the end of a notice, or of arrears
            transitions.append(("frozen", step[1]))
        for index, (name, start) in enumerate(transitions):
            if name in INACTIVE:
                end = transitions[index + 1][1] if index + 1 < len(transitions) else None
                periods.append((start, end))
        return periods

    def next_step(self) -> tuple[str, datetime] | None:
        """The lifecycle's next deadline: ``("frozen" | "released" | "closed", instant)``
        (None: none falls due). ``account show`` prints it (issue 25)."""
        if not self.lifecycle:
            return None
        state, since_text = self.lifecycle[-1]
        since = _instant(since_text)
        arrears = self.arrears or {}
        if state == "cancelling":
            return "frozen", since + NOTICE
        if state == "frozen" and self.frozen_for == "arrears":
            return ("released", _instant(arrears["release_at"])) if arrears.get("release_at") else None
        if state == "frozen":
            return "closed", since + FROZEN
        if state == "kept":
            return "closed", add_months(since, KEEP_MONTHS_MAX)
        if state == "active" and self.suspended and arrears:
            if arrears.get("frozen_at"):
                return "frozen", _instant(arrears["frozen_at"])  # type: ignore[arg-type]
            if arrears.get("release_at"):
                return "released", _instant(arrears["release_at"])  # type: ignore[arg-type]
        return None

    def release_of(self, number: str) -> datetime | None:
        """When ``number`` is (or is due to be) released: its calls that start then or
        later are no account's (unknown_number). None: it is not."""
        if number in self.released:
            return _instant(self.released[number])
        step = self.next_step()
        if number not in self.numbers or step is None:
            return None
        if step[0] in ("released", "closed"):
            return step[1]
        if step[0] == "frozen" and self.current == "cancelling":
            return step[1] + FROZEN
        release_at = (self.arrears or {}).get("release_at")
        return _instant(release_at) if release_at else None

    def away_at(self, number: str, instant: datetime) -> str | None:
        """The account that held ``number`` at ``instant`` when this one had given it away
        then (a transfer, issue 25); None when it was not away."""
        for to, since, until in self.away.get(number, []):
            if _instant(since) <= instant and (until is None or instant < _instant(until)):  # type: ignore[arg-type]
                return to
        return None


@dataclass(frozen=True)
class Credit:
    """An account's package credit (issue 23): what is left, until when, and whether what
    is left at the end goes to the balance (``refund``) or is forfeited."""

    amount: int
    expires: datetime
    refund: bool = False

    def to_json(self) -> list[Any]:
        return [self.amount, self.expires.astimezone(timezone.utc).isoformat(), self.refund]

    @classmethod
    def from_json(cls, value: list[Any] | None) -> Credit | None:
        return None if not value else cls(int(value[0]), datetime.fromisoformat(value[1]), bool(value[2]))

    def with_amount(self, amount: int) -> Credit:
        return Credit(amount, self.expires, self.refund)


def credit_event_id(account_id: str, expires: datetime) -> str:
    """The id of the ``PackageCreditExpired`` event that ends a credit (one per credit end)."""
    return f"{account_id}/PackageCreditExpired/{expires.astimezone(timezone.utc).isoformat()}"


@dataclass(frozen=True)
class Terms:
    """What the fold needs to know of an account besides its book."""

    account_id: str
    plan: Plan
    low_balance_threshold: int
    #: the catalogue's unusual_spend_factor in hundredths (issue 25; 0: no such alert)
    unusual_spend_percent: int = 500


@dataclass
class Applied:
    """What folding one command (or one deadline) did."""

    events: list[LedgerEvent] = field(default_factory=list)
    #: alert rows (account_id, kind, cdr_id = the event id, balance, line 0, local_day)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    #: (number, status, event id, instant): blocked | active | released
    statuses: list[tuple[str, str, str, datetime]] = field(default_factory=list)
    refusal: str | None = None
    #: the package credit after the command (None: none)
    credit: Credit | None = None


class _Fold:
    """Applies events to a book and balance, with their alerts and consequences."""

    def __init__(self, book: Book, balance: int, terms: Terms, offset: int = -1, credit: Credit | None = None) -> None:
        self.book = book
        self.balance = balance
        self.terms = terms
        #: the log offset of the command being folded (-1: not known)
        self.offset = offset
        #: package credit (issue 23): floor charges draw on it before the balance
        self.credit = credit
        self.out = Applied()
        # the numbers coming and going start from those the book holds (rating.invoicing)
        invoicing.seed_numbers(book.billing, book.numbers, book.opened_at)

    @property
    def funds(self) -> int:
        """Credit + balance: what alerts, suspension and reactivation judge (docs/rules.md)."""
        return self.balance + (self.credit.amount if self.credit else 0)

    # ------------------------------------------------------------------ posting
    def post(
        self, kind: str, event_id: str, at: datetime, amount: int = 0, *, credit_change: int = 0,
        quiet: bool = False, **extra: Any,
    ) -> None:
        """Record an event and move the balance (and the credit by ``credit_change``);
        ``quiet``: without the alerts and reactivation the money would bring (the caller
        sees to them)."""
        before = self.funds
        if kind == "AccountOpened":
            before = extra.get("opening_balance", 0)
            self.balance = before
        self.balance += amount
        if credit_change and self.credit is not None:
            self.credit = self.credit.with_amount(self.credit.amount + credit_change)
        self.book.event_count += 1
        self.out.events.append(
            LedgerEvent(
                event_id=event_id,
                account_id=self.terms.account_id,
                kind=kind,  # type: ignore[arg-type]
                at=at,
                amount=amount,
                balance=self.balance,
                plan_id=self.book.plan_id or self.terms.plan.id,
                credit_change=credit_change,
                credit=self.credit.amount if self.credit else 0,
                **extra,
            )
        )
        # issue 24: what the event charged waits for its invoice (or note)
        invoicing.record_event(self.book.billing, self.out.events[-1], self.terms.plan.zone, self.offset)
        if quiet:
            return
        if self.funds < before and kind != "RefundIssued":  # a refund empties the balance on purpose
            self._alerts(before, event_id, at)
        elif self.funds > before:
            self._credited(event_id, at)
        if kind in SPEND_KINDS:
            self._spent(-(amount + credit_change), event_id, at)

    def _spent(self, charged: int, event_id: str, at: datetime) -> None:
        """A charge adds to its month's spend, and may raise ``unusual_spend`` (issue 25)."""
        local = at.astimezone(self.terms.plan.zone)
        month = local.strftime("%Y-%m")
        if not add_spend(self.book, month, charged, self.terms.unusual_spend_percent):
            return
        self.out.alerts.append(
            {
                "account_id": self.terms.account_id,
                "kind": "unusual_spend",
                "cdr_id": event_id,
                "balance": self.balance,
                "line": 0,
                "local_day": local.date(),
            }
        )

    def charge(self, kind: str, event_id: str, at: datetime, amount: int, **extra: Any) -> None:
        """A floor charge (true-up, early termination): drawn on the package credit first,
        the rest from the balance (issue 23)."""
        drawn = min(self.credit.amount, amount) if self.credit else 0
        self.post(kind, event_id, at, -(amount - drawn), credit_change=-drawn, **extra)

    def end_credit(self, at: datetime, why: str) -> None:
        """The package credit ends: what is left is forfeited (the breakage), or goes to
        the balance when the package says ``unused = "refund"``. Raises no alert."""
        credit = self.credit
        if credit is None:
            return
        if credit.amount:
            refund = credit.amount if credit.refund else 0
            self.post(
                "PackageCreditExpired",
                credit_event_id(self.terms.account_id, credit.expires),
                at,
                refund,
                credit_change=-credit.amount,
                quiet=True,
                reference=credit.expires.astimezone(self.terms.plan.zone).isoformat(),
                detail=f"{why}: credit {credit.amount} {'to the balance' if credit.refund else 'forfeited'}",
            )
        self.credit = None

    def _alerts(self, before: int, event_id: str, at: datetime) -> None:
        # rating.md 5, in its order: low_balance, then arrears (which suspends); on the funds.
        threshold = self.terms.low_balance_threshold
        day = at.astimezone(self.terms.plan.zone).date()
        for kind, line in (("low_balance", threshold), ("arrears", 0)):
            if before >= line > self.funds:
                self.out.alerts.append(
                    {
                        "account_id": self.terms.account_id,
                        "kind": kind,
                        "cdr_id": event_id,
                        "balance": self.balance,
                        "line": 0,
                        "local_day": day,
                    }
                )
        if before >= 0 > self.funds:
            self.suspend(f"{self.terms.account_id}/AccountSuspended/{event_id}", at)

    def suspend(self, event_id: str, at: datetime) -> None:
        if self.book.suspended or self.book.current not in ("active", "cancelling"):
            return
        self.book.suspended = True
        lifecycle = self._start_arrears(at)
        self.post("AccountSuspended", event_id, at, detail=f"balance {self.balance} below 0" + (
            f" (credit {self.credit.amount})" if self.credit else "") + lifecycle)
        self._status("blocked", event_id, at)

    def _start_arrears(self, at: datetime) -> str:
        """The arrears lifecycle of a suspension of an active account (issue 25): frozen
        ``frozen_after_days`` after it, its numbers released ``reclaim_after_days`` after
        it, as the version in force at the suspension says. Words for the event's detail."""
        version = self.terms.plan.version_at(at)
        if self.book.current != "active" or version is None:
            return ""
        frozen = at + timedelta(days=version.frozen_after_days) if version.frozen_after_days else None
        release = at + timedelta(days=version.reclaim_after_days) if version.reclaim_after_days else None
        if frozen is None and release is None:
            return ""
        self.book.arrears = {
            "since": at.isoformat(),
            "frozen_at": None if frozen is None else frozen.isoformat(),
            "release_at": None if release is None else release.isoformat(),
        }
        return "".join(
            f"; {what} {when.isoformat()} unless paid back" for what, when in
            (("frozen", frozen), ("numbers released", release)) if when is not None
        )

    def _credited(self, event_id: str, at: datetime) -> None:
        if self.funds < 0:
            return
        if self.book.suspended:
            self.book.suspended = False
            self.book.arrears = None
            reactivated = f"{self.terms.account_id}/AccountReactivated/{event_id}"
            if self.book.current == "frozen" and self.book.frozen_for == "arrears":
                # issue 25: frozen for arrears, not yet reclaimed: paying back restores it
                self.book.frozen_for = ""
                self.transition("active", at)
            self.post("AccountReactivated", reactivated, at)
            if self.book.current in ("active", "cancelling"):
                self._status("active", reactivated, at)
        if self.book.refund_pending:
            self.book.refund_pending = False
            self._refund(at, f"paid back by {event_id}")

    def _status(self, status: str, event_id: str, at: datetime) -> None:
        self.out.statuses.extend((number, status, event_id, at) for number in self.book.numbers)

    def transition(self, state: str, at: datetime) -> None:
        self.book.lifecycle.append([state, at.isoformat()])
        self.book.lifecycle.sort(key=lambda item: _instant(item[1]))

    def _refund(self, at: datetime, why: str) -> None:
        if self.balance <= 0:
            return
        due = working_days_after(at.astimezone(self.terms.plan.zone).date(), REFUND_WORKING_DAYS)
        self.post(
            "RefundIssued",
            f"{self.terms.account_id}/RefundIssued/{at.isoformat()}",
            at,
            -self.balance,
            detail=f"refund of the positive balance, due by {due.isoformat()} ({why})",
            reference=due.isoformat(),
        )

    # ------------------------------------------------------------------ deadlines
    def advance(self, until: datetime) -> None:
        """Apply the deadlines that fall at or before ``until``, in time order: the
        lifecycle's and the end of the package credit's term."""
        while True:
            deadline = self._lifecycle_deadline()
            ends = self.credit.expires if self.credit is not None else None
            if ends is not None and ends <= until and (deadline is None or ends <= deadline[0]):
                self.end_credit(ends, "end of the package term")
            elif deadline is not None and deadline[0] <= until:
                deadline[1]()
            else:
                return

    def _lifecycle_deadline(self) -> tuple[datetime, Callable[[], None]] | None:
        """The next lifecycle deadline and what it does (None: there is none)."""
        step = self.book.next_step()
        if step is None:
            return None
        what, at = step
        state = self.book.current
        if what == "frozen" and state == "cancelling":
            return at, lambda: self._freeze(at)
        if what == "frozen":
            return at, lambda: self._arrears_freeze(at)
        if what == "released":
            return at, lambda: self._reclaim(at)
        if state == "frozen":
            return at, lambda: self._close(at, "end of the 90 frozen days")
        return at, lambda: self._close(at, f"kept for {KEEP_MONTHS_MAX} months")

    def _arrears_freeze(self, at: datetime) -> None:
        """Suspended for ``frozen_after_days``: frozen (numbers blocked, no calls, no fees);
        paying back still restores it until its numbers are released (issue 25)."""
        frozen = f"{self.terms.account_id}/NumberFrozen/{at.isoformat()}"
        self.book.frozen_for = "arrears"
        self.transition("frozen", at)
        release = (self.book.arrears or {}).get("release_at")
        self.post("NumberFrozen", frozen, at, detail="in arrears since " + str((self.book.arrears or {}).get("since"))
                  + (f"; numbers released {release} unless paid back" if release else ""))
        self._status("blocked", frozen, at)

    def _reclaim(self, at: datetime) -> None:
        """In arrears for ``reclaim_after_days``: the numbers are released (NumberReleased,
        each) and the account is closed, its debt kept (issue 25)."""
        account = self.terms.account_id
        for number in list(self.book.numbers):
            released = f"{account}/NumberReleased/{number}/{at.isoformat()}"
            self.post("NumberReleased", released, at, reference=number,
                      detail=f"reclaimed: in arrears since {(self.book.arrears or {}).get('since')}")
            self.out.statuses.append((number, "released", released, at))
            self.book.released[number] = at.isoformat()
        self.book.numbers = []
        self.end_credit(at, "numbers reclaimed")
        self.transition("closed", at)
        self.book.suspended = False
        self.book.arrears = None
        self.book.frozen_for = ""
        self.book.refund_due = False
        self.post("AccountClosed", f"{account}/AccountClosed/{at.isoformat()}", at,
                  detail=f"numbers reclaimed after arrears; balance {self.balance} still owed" if self.balance < 0
                  else "numbers reclaimed after arrears")

    def _freeze(self, at: datetime) -> None:
        # The refund waits for the close of this month, after its charges.
        self.book.refund_due = True
        frozen = f"{self.terms.account_id}/NumberFrozen/{at.isoformat()}"
        self.transition("frozen", at)
        self.post("NumberFrozen", frozen, at, detail=f"frozen until {(at + FROZEN).isoformat()}")
        self._status("blocked", frozen, at)

    def _close(self, at: datetime, why: str) -> None:
        closed = f"{self.terms.account_id}/AccountClosed/{at.isoformat()}"
        self.end_credit(at, "account closed")
        self.transition("closed", at)
        self.book.suspended = False
        self.post("AccountClosed", closed, at, detail=f"{why}; numbers released")
        self.book.refund_due = False
        self._status("released", closed, at)
        self.book.released.update({number: at.isoformat() for number in self.book.numbers})


# ---------------------------------------------------------------------------- commands


def apply_command(
    book: Book, balance: int, command: LedgerCommand, terms: Terms, *, offset: int = -1,
    credit: Credit | None = None,
) -> tuple[Book, int, Applied]:
    """Fold one command into an account's book, balance and package ``credit``.

    A command the book already holds (same payment reference, month already closed, ...)
    changes nothing; one the book cannot take (a reference used for another amount, a
    closed account) changes nothing and says why in ``Applied.refusal``. ``offset`` is the
    command's place in the account's log (a correction needs it). ``Applied.credit`` is
    the credit after the command.
    """
    fold = _Fold(Book.from_json(book.to_json()), balance, terms, offset, credit)
    fold.out.credit = credit
    account = terms.account_id
    kind = command.kind
    at = command.at
    if kind != "open":
        if fold.book.opened_at is None:
            fold.out.refusal = f"account {account} has no AccountOpened on its log"
            return book, balance, fold.out
        fold.advance(at if kind != "close_month" else month_bounds(command.month, terms.plan.zone)[1] - _MICRO)
    handler = _HANDLERS[kind]
    refusal = handler(fold, command)
    if refusal:
        fold.out.refusal = refusal
    local = at.astimezone(terms.plan.zone)
    fold.book.forget_before(_month_text(local.year * 12 + local.month - 1 - LEDGER_MEMORY_MONTHS))
    fold.out.credit = fold.credit
    return fold.book, fold.balance, fold.out


def _month_text(month_key: int) -> str:
    year, month0 = divmod(month_key, 12)
    return f"{year:04d}-{month0 + 1:02d}"


def _open(fold: _Fold, command: LedgerCommand) -> str | None:
    book, account = fold.book, fold.terms.account_id
    if book.opened_at is not None:
        return None if command.imported else f"account {account} is open already (since {book.opened_at})"
    # issue 23: opening on a package plan buys the package, which the money left must pay.
    version = fold.terms.plan.version_at(command.at)
    package = version.package if version is not None else None
    fees = command.opening_fee + sum(fee for _, fee in command.number_fees.values())
    if package is not None and command.opening_balance - fees < package.price:
        return (
            f"the opening balance {command.opening_balance} less the fees {fees} does not pay for the package "
            f"of plan {fold.terms.plan.id} ({package.price})"
        )
    book.plan_id = command.plan
    book.numbers = list(command.numbers)
    book.opened_at = command.at.isoformat()
    fold.transition("active", command.at)
    opened = f"{account}/AccountOpened"
    fold.post(
        "AccountOpened",
        opened,
        command.at,
        -command.opening_fee,
        opening_balance=command.opening_balance,
        reference=",".join(command.numbers),
        detail="imported from the accounts file" if command.imported else f"opening fee {command.opening_fee}",
    )
    for number in command.numbers:
        grade, fee = command.number_fees.get(number, ("", 0))
        fold.post(
            "NumberAssigned",
            f"{account}/NumberAssigned/{number}",
            command.at,
            -fee,
            reference=number,
            detail=f"grade {grade}, selection fee {fee}" if grade else "imported",
        )
    if package is not None:
        ends = package.ends(command.at, fold.terms.plan.zone)
        fold.credit = Credit(0, ends, package.unused == "refund")
        fold.post(
            "PackagePurchased",
            f"{account}/PackagePurchased",
            command.at,
            -package.price,
            credit_change=package.granted,
            reference=ends.isoformat(),
            detail=f"package {package.price}: credit {package.granted} for {package.term_months} month(s), "
            f"until {ends.isoformat()} (unused credit: {package.unused})",
        )
    fold._status("active", opened, command.at)
    return None


def _renew(fold: _Fold, command: LedgerCommand) -> str | None:
    """A renewal (issue 23): the renewal price leaves the balance, the package's credit is
    added to what is left, and the term restarts on the renewal day or extends from the
    current end (the version in force at the renewal says which)."""
    account, plan = fold.terms.account_id, fold.terms.plan
    if fold.book.shown_state() != "active":
        return f"account {account} is {fold.book.shown_state()}: only an active account can renew its package"
    version = plan.version_at(command.at)
    package = version.package if version is not None else None
    if package is None:
        return f"plan {plan.id} has no package at {command.at.isoformat()}: nothing to renew"
    price = package.renews_for
    if fold.balance < price:
        return f"the balance {fold.balance} does not pay for the renewal ({price}): top up first"
    left = fold.credit.amount if fold.credit is not None else 0
    start = command.at
    if package.renewal == "extend" and fold.credit is not None:
        start = max(start, fold.credit.expires)
    ends = package.ends(start, plan.zone)
    fold.credit = Credit(left, ends, package.unused == "refund")
    fold.post(
        "PackageRenewed",
        f"{account}/PackageRenewed/{command.at.isoformat()}",
        command.at,
        -price,
        credit_change=package.granted,
        reference=ends.isoformat(),
        detail=f"renewal {price} ({package.renewal}): credit {package.granted} added to {left}, "
        f"until {ends.isoformat()}",
    )
    return None


def _topup(fold: _Fold, command: LedgerCommand) -> str | None:
    known = fold.book.topups.get(command.ref)
    if known is not None:
        if known == command.amount:
            return None
        return f"payment reference {command.ref!r} was already used for another amount ({known})"
    version = fold.terms.plan.version_at(command.at)
    if version is not None and version.min_topup is not None and command.amount < version.min_topup:
        return f"a top-up of {command.amount} is below the minimum top-up of plan {fold.terms.plan.id} ({version.min_topup})"
    fold.book.topups[command.ref] = command.amount
    fold.book.topup_months[command.ref] = command.at.astimezone(fold.terms.plan.zone).strftime("%Y-%m")
    fold.post(
        "TopUpReceived",
        f"{fold.terms.account_id}/TopUpReceived/{command.ref}",
        command.at,
        command.amount,
        reference=command.ref,
    )
    return None


def _services(fold: _Fold, command: LedgerCommand) -> str | None:
    if fold.book.current in ("frozen", "closed"):
        return f"account {fold.terms.account_id} is {fold.book.current}: its services cannot change"
    version = fold.terms.plan.version_at(command.at)
    known = version.services if version is not None else {}
    unknown = sorted(name for name in command.enable if name not in known)
    if unknown:
        return f"plan {fold.terms.plan.id} has no service {', '.join(unknown)} (it has {', '.join(known)})"
    for name, enable in [(s, True) for s in command.enable] + [(s, False) for s in command.disable]:
        intervals = fold.book.services.setdefault(name, [])
        on = bool(intervals) and intervals[-1][1] is None
        if on == enable:
            continue
        if enable:
            intervals.append([command.at.isoformat(), None])
        else:
            intervals[-1][1] = command.at.isoformat()
        kind = "ServiceEnabled" if enable else "ServiceDisabled"
        fold.post(kind, f"{fold.terms.account_id}/{kind}/{name}/{command.at.isoformat()}", command.at, reference=name)
    return None


def _keep(fold: _Fold, command: LedgerCommand) -> str | None:
    if fold.book.current == "kept":
        return None
    if fold.book.current != "active":
        return f"account {fold.terms.account_id} is {fold.book.shown_state()}: only an active account can be kept"
    event_id = f"{fold.terms.account_id}/KeepNumberStarted/{command.at.isoformat()}"
    fold.transition("kept", command.at)
    fold.post("KeepNumberStarted", event_id, command.at, detail=f"at most {KEEP_MONTHS_MAX} months")
    fold._status("blocked", event_id, command.at)
    return None


def _resume(fold: _Fold, command: LedgerCommand) -> str | None:
    if fold.book.current != "kept":
        return f"account {fold.terms.account_id} is {fold.book.shown_state()}, not kept: nothing to resume"
    event_id = f"{fold.terms.account_id}/KeepNumberEnded/{command.at.isoformat()}"
    fold.transition("active", command.at)
    fold.post("KeepNumberEnded", event_id, command.at)
    fold.book.suspended = fold.balance < 0
    if fold.book.suspended:
        fold._start_arrears(command.at)
    fold._status("blocked" if fold.book.suspended else "active", event_id, command.at)
    return None


def _cancel(fold: _Fold, command: LedgerCommand) -> str | None:
    current = fold.book.current
    if current == "cancelling":
        return None
    if current in ("frozen", "closed"):
        return f"account {fold.terms.account_id} is {current}: it cannot be cancelled"
    account = fold.terms.account_id
    # issue 23: the lock-in of the version the account was opened on.
    opened = _instant(fold.book.opened_at)  # type: ignore[arg-type]
    contract = fold.terms.plan.version_at(opened)
    term_end = add_months(opened.astimezone(fold.terms.plan.zone), contract.min_term_months) if (
        contract is not None and contract.min_term_months) else None
    if contract is not None and term_end is not None and command.at < term_end:
        if contract.early_termination == "refuse":
            return (
                f"account {account} cannot be cancelled before the end of its minimum term of "
                f"{contract.min_term_months} month(s) ({term_end.isoformat()})"
            )
        months = months_started(command.at, term_end)
        floors = (contract.minimum_monthly_spend or 0) * (
            len(fold.book.numbers) if contract.minimum_scope == "number" else 1
        )
        if floors * months:
            fold.charge(
                "EarlyTerminationCharged",
                f"{account}/EarlyTerminationCharged/{command.at.isoformat()}",
                command.at,
                floors * months,
                reference=term_end.isoformat(),
                detail=f"cancelled inside the minimum term: {months} month(s) left of the floor {floors}",
            )
    if current == "kept":
        fold.post("KeepNumberEnded", f"{account}/KeepNumberEnded/{command.at.isoformat()}", command.at)
    fold.transition("cancelling", command.at)
    fold.post(
        "CancellationRequested",
        f"{account}/CancellationRequested/{command.at.isoformat()}",
        command.at,
        detail=f"notice ends {(command.at + NOTICE).isoformat()}",
    )
    return None


def _close_month(fold: _Fold, command: LedgerCommand) -> str | None:
    book, terms, month = fold.book, fold.terms, command.month
    if month in book.closed_months or not book.remembers(month):
        return None
    zone = terms.plan.zone
    start, end = month_bounds(month, zone)
    opened = _instant(book.opened_at)  # type: ignore[arg-type]
    if opened >= end:
        return None  # opened after the month: nothing to close (not recorded as closed)
    # issue 24: the close is a fact of its own (an invoice of the month needs it). No
    # money: neither a charge of the month (unusual_spend) nor an invoice line.
    fold.post("MonthClosed", f"{terms.account_id}/MonthClosed/{month}", end - _MICRO, reference=month)
    version = month_version(terms.plan, start, end)
    if version is None:
        book.closed_months.append(month)
        return None
    last = end - _MICRO
    account = terms.account_id
    states = _states_during(book, start, end)
    entirely_inactive = states <= INACTIVE
    days = calendar.monthrange(start.year, start.month)[1]

    opened_day = opened.astimezone(zone).date()
    # issue 23: the month the account was opened in is pro-rated (rent by days, no floor
    # unless opened on its first day), charged in full, or charged its calls only.
    first_month = version.first_month if opened >= start else None
    rent = version.monthly_rent
    detail = f"monthly rent {rent}"
    if entirely_inactive or first_month == "actual":
        rent = 0
    elif opened > start and first_month == "prorate":
        active_days = days - opened_day.day + 1
        rent = round_half_up(version.monthly_rent * active_days, days)
        detail = f"monthly rent {version.monthly_rent} x {active_days}/{days} days (opened {opened_day})"
    if rent and version.rent_scope == "number":
        for number in book.numbers:
            fold.post("RentCharged", f"{account}/RentCharged/{month}/{number}", last, -rent, reference=month,
                      detail=f"{detail} for {number}")
    elif rent:
        fold.post("RentCharged", f"{account}/RentCharged/{month}", last, -rent, reference=month, detail=detail)

    if not entirely_inactive:
        for service in [name for name in version.services if name in book.services]:
            fee, why = _service_fee(book, version, service, month)
            if fee and _overlaps(book.services[service], start, end):
                if version.services[service].period != "month":
                    book.service_charged[service] = month
                fold.post(
                    "ServiceFeeCharged",
                    f"{account}/ServiceFeeCharged/{month}/{service}",
                    last,
                    -fee,
                    reference=month,
                    detail=f"{service} {why}",
                )

    minimum = version.minimum_monthly_spend
    floor_applies = not (states & INACTIVE) and (
        first_month is None or first_month == "full" or (first_month == "prorate" and opened_day <= start.date())
    )
    if minimum and floor_applies and version.minimum_scope == "number":
        for number in book.numbers:
            usage = book.number_usage.get(month, {}).get(number, 0)
            if minimum > usage:
                fold.charge(
                    "MinimumSpendTrueUp",
                    f"{account}/MinimumSpendTrueUp/{month}/{number}",
                    last,
                    minimum - usage,
                    reference=month,
                    detail=f"minimum monthly spend {minimum} of {number}, its calls {usage}",
                )
    elif minimum and floor_applies:
        usage = book.usage.get(month, 0)
        shortfall = max(0, minimum - usage)
        if shortfall:
            fold.charge(
                "MinimumSpendTrueUp",
                f"{account}/MinimumSpendTrueUp/{month}",
                last,
                shortfall,
                reference=month,
                detail=f"minimum monthly spend {minimum}, calls {usage}",
            )

    if "kept" in _states_during(book, start, start + timedelta(days=1)) and version.keep_number_fee:
        fold.post(
            "KeepNumberFeeCharged",
            f"{account}/KeepNumberFeeCharged/{month}",
            last,
            -version.keep_number_fee,
            reference=month,
            detail="kept on the first day of the month",
        )
    # The month is closed once its charges are posted (they are its spend, issue 25): a
    # whole active month is unusual_spend's basis for the months after it.
    book.closed_months.append(month)
    charged = book.spend.pop(month, 0)
    if opened <= start and not (states & INACTIVE):
        book.spend_closed[month] = charged
    if book.refund_due and book.current in ("frozen", "closed"):
        book.refund_due = False
        # Package credit is never refunded but by a package that says so (issue 23).
        fold.end_credit(last, "cancelled")
        if fold.balance > 0:
            fold._refund(last, f"end of the cancellation notice, after the {month} charges")
        elif fold.balance < 0:
            book.refund_pending = True
    return None


def _service_fee(book: Book, version: PlanVersion, service: str, month: str) -> tuple[int, str]:
    """What a service enabled in ``month`` costs at its close, and the words for it: a
    monthly fee every month, a yearly fee in the month it was first charged and every 12
    months after, a one-off fee once; nothing when the plan includes it (issue 23)."""
    terms = version.services.get(service)
    if terms is None or terms.included or not terms.fee:
        return 0, ""
    last = book.service_charged.get(service)
    if terms.period == "year":
        due = last is None or _month_number(month) - _month_number(last) >= 12
        return (terms.fee, "yearly fee") if due else (0, "")
    if terms.period == "once":
        return (terms.fee, "one-off fee") if last is None else (0, "")
    return terms.fee, "monthly fee"


def _month_number(month: str) -> int:
    return int(month[:4]) * 12 + int(month[5:7]) - 1


def _sla_credit(fold: _Fold, command: LedgerCommand) -> str | None:
    terms, book = fold.terms, fold.book
    zone = terms.plan.zone
    start, end = command.start, command.end
    assert start is not None and end is not None
    day = start.astimezone(zone).date()
    while True:
        day_start = datetime(day.year, day.month, day.day, tzinfo=zone)
        if day_start >= end:
            break
        day_end = day_start + timedelta(days=1)
        touched = min(end, day_end) - max(start, day_start)
        month = f"{day.year:04d}-{day.month:02d}"
        m_start, m_end = month_bounds(month, zone)
        version = month_version(terms.plan, m_start, m_end)
        limit = version.sla_credit_after_minutes if version else 0
        if (
            version
            and touched > timedelta(minutes=limit)
            and day.isoformat() not in book.sla_days
            and book.remembers(month)
        ):
            days = calendar.monthrange(day.year, day.month)[1]
            monthly, months, what = _sla_base(version, len(book.numbers))
            credit = round_half_up(monthly, months * days)
            book.sla_days.append(day.isoformat())
            if credit:
                fold.post(
                    "SlaCreditGranted",
                    f"{terms.account_id}/SlaCreditGranted/{day.isoformat()}",
                    command.end,  # type: ignore[arg-type]
                    credit,
                    reference=day.isoformat(),
                    detail=f"fault of {int(touched.total_seconds() // 60)} min on {day} (> {limit} min): "
                    f"a day's {what} {monthly}/{f'{months}/' if months > 1 else ''}{days}",
                )
        day = day + timedelta(days=1)
    return None


def _sla_base(version: PlanVersion, numbers: int) -> tuple[int, int, str]:
    """What a day of outage credits, as (amount, over how many months, words), of the
    version's ``sla_credit_base`` (issue 25): its rent, its floor (per number when rent or
    floor is per number), or its package price over the term. A day is that over the
    month's days."""
    if version.sla_credit_base == "floor":
        floor = version.minimum_monthly_spend or 0
        return floor * (numbers if version.minimum_scope == "number" else 1), 1, "floor"
    if version.sla_credit_base == "package":
        package = version.package
        return (0, 1, "package") if package is None else (package.price, package.term_months, "package")
    return version.monthly_rent * (numbers if version.rent_scope == "number" else 1), 1, "rent"


def _transfer_out(fold: _Fold, command: LedgerCommand) -> str | None:
    """The number leaves this account at the instant (issue 25): only when every fee is
    settled (no negative balance, the month before closed) and the account is not in
    arrears, frozen or closed. Calls of it charged from then on are the new account's."""
    book, account, number = fold.book, fold.terms.account_id, command.number
    at, to = command.at, command.counterpart
    if number not in book.numbers:
        periods = book.away.get(number, [])
        if periods and periods[-1][0] == to and periods[-1][1] == at.isoformat():
            return None  # recorded already
        return f"number {number} is not account {account}'s"
    if fold.balance < 0:
        return (
            f"account {account} owes {-fold.balance} (balance {fold.balance}): every fee must be paid before "
            f"number {number} can be transferred"
        )
    state = book.shown_state()
    if state in ("suspended", "frozen", "closed"):
        return f"account {account} is {state}: its number cannot be transferred"
    local = at.astimezone(fold.terms.plan.zone)
    before = _month_text(local.year * 12 + local.month - 2)
    opened = _instant(book.opened_at)  # type: ignore[arg-type]
    if opened < month_bounds(before, fold.terms.plan.zone)[1] and before not in book.closed_months and book.remembers(before):
        return f"month {before} of account {account} is not closed: its fees are not settled yet (close-month {before})"
    book.numbers.remove(number)
    book.away.setdefault(number, []).append([to, at.isoformat(), None])
    fold.post(
        "NumberTransferred", f"{account}/NumberTransferred/{number}/{at.isoformat()}", at,
        reference=number, transferred_to=to, detail=f"to account {to}: its calls charged from {at.isoformat()} on",
    )
    return None


def _transfer_in(fold: _Fold, command: LedgerCommand) -> str | None:
    """The number joins this account at the instant (issue 25)."""
    book, account, number = fold.book, fold.terms.account_id, command.number
    if number in book.numbers:
        return None  # recorded already
    if book.current in ("frozen", "closed"):
        return f"account {account} is {book.current}: it cannot take number {number}"
    at = command.at
    book.numbers.append(number)
    book.released.pop(number, None)
    for period in book.away.get(number, []):
        if period[2] is None:
            period[2] = at.isoformat()  # it comes back: no longer away
    event_id = f"{account}/NumberTransferred/{number}/{at.isoformat()}"
    fold.post("NumberTransferred", event_id, at, reference=number,
              detail=f"from account {command.counterpart}: its calls charged from {at.isoformat()} on")
    blocked = book.suspended or book.current == "kept"
    fold.out.statuses.append((number, "blocked" if blocked else "active", event_id, at))
    return None


def _rerate(fold: _Fold, command: LedgerCommand) -> str | None:
    """One part of a correction (schemas.corrections; docs/rules.md "Corrections").

    Each call's delta is one ``CallRerated`` event (amount ``-(new - old)``) in the month
    the command is applied; the month's usage (minimum spend) follows while the month is
    open. Alerts come with the correction (re-evaluated on the corrected history), so the
    events raise none here; a correction that takes a positive balance below 0 suspends
    the account, one that brings a suspended account back to >= 0 reactivates it.
    """
    correction = command.correction
    assert correction is not None
    book, terms = fold.book, fold.terms
    account = terms.account_id
    applied = book.corrections.get(correction.correction_id)
    if applied is not None and correction.part in applied[1]:
        return None  # this part is recorded already: a retry or a racing copy
    if applied is None and correction.based_on < book.corrected_offset:
        return (
            f"correction {correction.correction_id} was computed from the log up to offset {correction.based_on}, "
            f"but another correction was applied since (at offset {book.corrected_offset}): run cdrflow rerate again"
        )
    local = command.at.astimezone(terms.plan.zone)
    applied_month = local.strftime("%Y-%m")
    before = fold.balance
    for call in correction.calls:
        fold.post(
            "CallRerated",
            f"{account}/CallRerated/{call.cdr_id}/{correction.correction_id}",
            command.at,
            -call.delta,
            quiet=True,
            reference=f"{call.month}/{call.cdr_id}",
            detail=f"correction {correction.correction_id}: call of {call.local_day} billed {call.old_amount}, "
            f"now {call.new_amount}",
        )
        if call.month not in book.closed_months and book.remembers(call.month):
            # An open month's minimum spend counts its calls as corrected; a closed one
            # stays as it was closed (docs/rules.md).
            book.usage[call.month] = book.usage.get(call.month, 0) + call.delta
            if call.called and tracks_numbers(terms.plan):
                numbers = book.number_usage.setdefault(call.month, {})
                numbers[call.called] = numbers.get(call.called, 0) + call.delta
    part_id = f"{correction.correction_id}.{correction.part}"
    if before >= 0 > fold.balance:
        fold.suspend(f"{account}/AccountSuspended/{part_id}", command.at)
    elif fold.balance > before:
        fold._credited(f"{account}/CallRerated/{part_id}", command.at)
    if applied is None:
        applied = book.corrections[correction.correction_id] = [applied_month, []]
    applied[1].append(correction.part)
    book.corrected_offset = max(book.corrected_offset, fold.offset)
    return None


def _invoice(fold: _Fold, command: LedgerCommand) -> str | None:
    """Issue a numbered document (issue 24; rating.invoicing): the invoice of a closed
    month, or a note of what a command changed in an invoiced month. A repeat issues
    nothing. The number was given by the seller's sequence before the command was written:
    the CLI checks first what the fold would refuse here (docs/finance.md "Invoice numbers")."""
    request = command.document
    assert request is not None
    book, terms = fold.book, fold.terms
    if request.kind == "invoice" and request.month not in book.closed_months and book.remembers(request.month):
        return f"month {request.month} is not closed for account {terms.account_id}: run close-month first"
    try:
        document = invoicing.issue(
            book.billing, request, account_id=terms.account_id, at=command.at, zone=terms.plan.zone,
            plan_id=book.plan_id or terms.plan.id, numbers=lambda month: numbers_in(book, month, terms.plan.zone),
            version_of=versions_of(terms.plan),
        )
    except ValueError as error:  # a month the tax file has no rate for: fix the file, run again
        return f"{request.number} cannot be issued: {error}"
    if document is None:
        return None
    kind = {"invoice": "InvoiceIssued", "credit_note": "CreditNoteIssued", "debit_note": "DebitNoteIssued"}[document.kind]
    about = request.month if request.kind == "invoice" else f"{request.source_offset}/{request.corrects}"
    fold.post(
        kind,
        f"{terms.account_id}/{kind}/{about}",
        command.at,
        reference=document.invoice_no or "",
        detail=f"{document.kind.replace('_', ' ')} of {document.corrects_month or document.month}"
        + (f", correcting {document.corrects}" if document.corrects else "")
        + f": gross {format_fen(document.totals.gross)}, VAT {format_fen(document.totals.tax)} CNY",
        document=document.model_dump_json(),
    )
    return None


_HANDLERS = {
    "open": _open,
    "topup": _topup,
    "services": _services,
    "keep": _keep,
    "resume": _resume,
    "cancel": _cancel,
    "close_month": _close_month,
    "sla_credit": _sla_credit,
    "rerate": _rerate,
    "renew": _renew,
    "invoice": _invoice,
    "transfer_out": _transfer_out,
    "transfer_in": _transfer_in,
}


# ---------------------------------------------------------------------------- after calls


def after_calls(
    book: Book, balance: int, terms: Terms, arrears_at: list[tuple[str, datetime]], credit: Credit | None = None
) -> tuple[Book, int, Applied]:
    """Suspend an account whose calls raised an ``arrears`` alert (ledger.md 5).

    ``arrears_at`` lists (cdr_id, charge instant) of the calls that raised one.
    """
    fold = _Fold(Book.from_json(book.to_json()), balance, terms, credit=credit)
    for cdr_id, at in arrears_at:
        fold.suspend(f"{terms.account_id}/AccountSuspended/{cdr_id}", at)
    return fold.book, fold.balance, fold.out


# ---------------------------------------------------------------------------- unusual spend


def spend_limit(book: Book, month: str, percent: int) -> int | None:
    """The charges of ``month`` above which ``unusual_spend`` is raised (issue 25): the
    factor (``percent`` / 100) times the average of the last ``SPEND_BASIS_MONTHS`` closed
    whole active months before it. None: no alert can be raised in that month (the rule
    is off, it was raised already, fewer closed months, or they charged nothing).

    >>> book = Book(spend_closed={"2026-01": 1_000_000, "2026-02": 900_000, "2026-03": 1_100_000})
    >>> spend_limit(book, "2026-04", 500), spend_limit(book, "2026-03", 500)
    (5000000, None)
    """
    if percent <= 0 or month in book.unusual_months:
        return None
    basis = [charged for closed, charged in sorted(book.spend_closed.items()) if closed < month][-SPEND_BASIS_MONTHS:]
    if len(basis) < SPEND_BASIS_MONTHS or sum(basis) <= 0:
        return None
    # charges > factor x sum / 3  <=>  charges > floor(percent x sum / 300), in integers
    return percent * sum(basis) // (100 * SPEND_BASIS_MONTHS)


def add_spend(book: Book, month: str, charged: int, percent: int) -> bool:
    """Add a charge to ``month``'s spend; True when it raises ``unusual_spend`` (the
    month's charges are above its limit for the first time). A closed month's charges are
    as its close left them."""
    if month in book.closed_months or not book.remembers(month):
        return False
    book.spend[month] = book.spend.get(month, 0) + charged
    limit = spend_limit(book, month, percent)
    if limit is None or book.spend[month] <= limit:
        return False
    book.unusual_months.append(month)
    return True


# ---------------------------------------------------------------------------- calendar


def month_bounds(month: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The local month ``YYYY-MM`` as [start, end) instants.

    Examples
    --------
    >>> start, end = month_bounds("2026-02", ZoneInfo("Asia/Shanghai"))
    >>> start.isoformat(), end.isoformat()
    ('2026-02-01T00:00:00+08:00', '2026-03-01T00:00:00+08:00')
    """
    year, number = int(month[:4]), int(month[5:7])
    following = (year + number // 12, number % 12 + 1)
    start = datetime(year, number, 1, tzinfo=zone)
    end = datetime(following[0], following[1], 1, tzinfo=zone)
    return fixed_offset(start), fixed_offset(end)


def month_version(plan: Plan, start: datetime, end: datetime) -> PlanVersion | None:
    """rating.md: the version in force at the month's start, else the first in it."""
    index = _version_for_period(plan, start, end)
    return None if index is None else plan.versions[index]


def numbers_in(book: Book, month: str, zone: ZoneInfo) -> list[str]:
    """The 400 numbers the account held at some instant of the local ``month``: those it
    holds, gave away or had released since (issue 25), as an invoice of the month names them."""
    changes = [(number, change, _instant(at)) for number, change, at in book.billing.get("numbers", [])]
    return invoicing.numbers_held(changes, *month_bounds(month, zone))


def versions_of(plan: Plan) -> Callable[[str], PlanVersion | None]:
    """The version of ``plan`` of each month "YYYY-MM" (:func:`month_version`)."""
    return lambda month: month_version(plan, *month_bounds(month, plan.zone))


def tracks_numbers(plan: Plan) -> bool:
    """Whether the book keeps the month's usage per 400 number: a version of the plan has
    floors per number (issue 23)."""
    return any(version.minimum_scope == "number" for version in plan.versions)


def months_started(at: datetime, end: datetime) -> int:
    """Whole or started months from ``at`` to ``end`` (at least 1 when ``at < end``).

    >>> from datetime import timezone
    >>> months_started(datetime(2026, 4, 20, tzinfo=timezone.utc), datetime(2026, 6, 10, tzinfo=timezone.utc))
    2
    """
    months = 0
    while add_months(at, months) < end:
        months += 1
    return months


def working_days_after(day: date, count: int) -> date:
    """``count`` working days (Monday to Friday) after ``day``.

    Examples
    --------
    >>> working_days_after(date(2026, 3, 6), 1)  # a Friday
    datetime.date(2026, 3, 9)
    """
    while count:
        day += timedelta(days=1)
        if day.weekday() < 5:
            count -= 1
    return day


def _states_during(book: Book, start: datetime, end: datetime) -> set[str]:
    """Every lifecycle state the account is in at some instant of [start, end)."""
    states = set()
    at_start = book.state_at(start)
    if at_start is not None:
        states.add(at_start)
    for name, at in book.lifecycle:
        if start < _instant(at) < end:
            states.add(name)
    return states


def _overlaps(intervals: list[list[str | None]], start: datetime, end: datetime) -> bool:
    for since, until in intervals:
        if _instant(since) < end and (until is None or _instant(until) > start):  # type: ignore[arg-type]
            return True
    return False


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)
