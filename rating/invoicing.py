"""Invoices and notes of an account (issue 24): what its log charged, waiting for an
invoice, and the document an ``invoice`` command freezes.

Pure: the ledger fold (``rating.ledger``) hands every event it posts to
:func:`record_event`, the worker's fold the calls of each round to :func:`record_calls`;
both add the money to the account's book (``Book.billing``, JSON-ready) by month and
line. Issuing (:func:`issue`) takes what is waiting into a document with its VAT
(:func:`build_document`, also what a draft is made of); the rules are in docs/rules.md
("Invoices and VAT"):

- an invoice of month M takes every charge of M and of earlier months that no invoice
  has taken yet, as the log holds them when it is issued (a call of M that comes after
  it is on the next invoice);
- a correction or an SLA credit of a month an invoice has taken waits for a note of its
  own (credit note, or debit note when it charges more), referring to that invoice;
- top-ups and refunds are payments, not charges: no line.

``billing`` holds ``pending`` ("month|kind|item" -> [units, quantity, seconds]),
``notes`` (note key -> the applied month, the month and number of the invoice it
corrects, its lines), ``invoices`` (month -> number), ``notes_issued`` (note key ->
[number, applied month]) and ``numbers`` (the account's 400 numbers coming and going,
[number, "in" | "out", instant]: a document's buyer holds those of its month, issue 25's
transfers and releases included; :func:`numbers_held`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final
from zoneinfo import ZoneInfo

from schemas.invoices import (
    UNITS_PER_FEN,
    Buyer,
    InvoiceDocument,
    InvoiceLine,
    InvoiceRequest,
    Seller,
    TaxTable,
    Totals,
    VatLine,
    round_to_fen,
)
from schemas.ledger import LedgerEvent

#: The line kinds of a document, in the order they are printed.
LINE_KINDS: Final[tuple[str, ...]] = (
    "calls", "rent", "service", "minimum_spend", "keep_number_fee", "opening_fee", "selection_fee", "package",
    "early_termination", "package_refund", "sla_credit", "correction",
)
#: Line kinds that adjust what an invoice already took: after it, a note of their own.
ADJUSTMENTS: Final = frozenset({"correction", "sla_credit"})
#: Not a line: what the months did without VAT of its own (package credit, docs/rules.md).
MEMO: Final = "memo"
#: The plan version of a month "YYYY-MM" (None: none in force), for a line's category and
#: whether its prices include VAT.
VersionOf = Callable[[str], Any]
#: Every service is a value-added telecom service unless its plan says otherwise.
DEFAULT_SERVICE_CATEGORY: Final = "value_added_telecom"
_DESCRIPTIONS: Final[Mapping[str, str]] = {
    "rent": "monthly rent",
    "minimum_spend": "minimum spend true-up",
    "keep_number_fee": "keep-number fee",
    "opening_fee": "opening fee",
    "early_termination": "early termination (floors left of the minimum term)",
    "package_refund": "unused package credit refunded",
}


# ---------------------------------------------------------------------------- recording


def event_charges(event: LedgerEvent, zone: ZoneInfo) -> list[tuple[str, str, str, int, int]]:
    """What an event puts on invoices: (month, kind, item, units, quantity) each, units
    charged to the customer (> 0) or given back (< 0); kind ``memo`` for package credit.

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> rent = LedgerEvent(event_id="A1/RentCharged/2026-03", account_id="A1", kind="RentCharged",
    ...     at=datetime(2026, 3, 31, 15, 59, 59, tzinfo=timezone.utc), amount=-1_090_000, balance=0)
    >>> event_charges(rent, ZoneInfo("Asia/Shanghai"))
    [('2026-03', 'rent', '', 1090000, 1)]
    """
    kind, amount = event.kind, event.amount
    month = event.at.astimezone(zone).strftime("%Y-%m")
    rest = event.event_id[len(event.account_id) + 1 :].split("/")  # after "<account>/"
    drawn = [(month, MEMO, "credit_drawn", -event.credit_change, 0)] if event.credit_change < 0 else []
    if kind == "AccountOpened":
        return [(month, "opening_fee", "", -amount, 1)] if amount else []
    if kind == "NumberAssigned":
        return [(month, "selection_fee", event.reference, -amount, 1)] if amount else []
    if kind == "RentCharged":
        return [(month, "rent", rest[2] if len(rest) > 2 else "", -amount, 1)]
    if kind == "ServiceFeeCharged":
        return [(month, "service", rest[-1], -amount, 1)]
    if kind == "MinimumSpendTrueUp":
        return [(month, "minimum_spend", rest[2] if len(rest) > 2 else "", -amount, 1), *drawn]
    if kind == "KeepNumberFeeCharged":
        return [(month, "keep_number_fee", "", -amount, 1)]
    if kind in ("PackagePurchased", "PackageRenewed"):
        return [(month, "package", "purchase" if kind == "PackagePurchased" else "renewal", -amount, 1)]
    if kind == "EarlyTerminationCharged":
        return [(month, "early_termination", "", -amount, 1), *drawn]
    if kind == "PackageCreditExpired":
        refunded = [(month, "package_refund", "", -amount, 1)] if amount > 0 else []
        forfeited = -(event.credit_change + amount)
        return refunded + ([(month, MEMO, "credit_forfeited", forfeited, 0)] if forfeited else [])
    if kind == "SlaCreditGranted":  # a day's rent back: of the month of that day
        return [(event.reference[:7], "sla_credit", event.reference, -amount, 1)]
    if kind == "CallRerated":  # reference "<month of the call>/<cdr_id>"; the id ends with the correction
        return [(event.reference[:7], "correction", rest[-1], -amount, 1)]
    return []


def record_event(billing: dict[str, Any], event: LedgerEvent, zone: ZoneInfo, offset: int = -1) -> None:
    """Add an event's charges to the account's ``billing`` (``offset``: the log offset of
    the command that made it, which names the note an adjustment waits for), and the
    numbers it gave or took."""
    for month, kind, item, units, quantity in event_charges(event, zone):
        _add(billing, month, kind, item, units, quantity, 0, offset)
    changes = number_changes(event)
    if changes:
        billing.setdefault("numbers", []).extend([number, change, at.isoformat()] for number, change, at in changes)


def seed_numbers(billing: dict[str, Any], numbers: Iterable[str], opened_at: str | None) -> None:
    """A book folded before the numbers were recorded (``billing`` without ``numbers``):
    its numbers now, held since the account opened."""
    if "numbers" not in billing and opened_at is not None:
        billing["numbers"] = [[number, "in", opened_at] for number in numbers]


def number_changes(event: LedgerEvent) -> list[tuple[str, str, datetime]]:
    """The 400 numbers an event gives the account (``in``) or takes from it (``out``;
    ``*``: all it holds): opened with, transferred in or out, released, closed (issue 25).

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> at = datetime(2026, 3, 10, tzinfo=timezone.utc)
    >>> out = LedgerEvent(event_id="A1/NumberTransferred/4008000001", account_id="A1", kind="NumberTransferred",
    ...     at=at, amount=0, balance=0, reference="4008000001", transferred_to="B1")
    >>> [change[:2] for change in number_changes(out)]
    [('4008000001', 'out')]
    """
    kind, at = event.kind, event.at
    if kind == "AccountOpened":
        return [(number, "in", at) for number in event.reference.split(",") if number]
    if kind == "NumberTransferred":
        return [(event.reference, "out" if event.transferred_to else "in", at)]
    if kind == "NumberReleased":
        return [(event.reference, "out", at)]
    if kind == "AccountClosed":
        return [("*", "out", at)]
    return []


def numbers_held(changes: Iterable[tuple[str, str, datetime]], start: datetime, end: datetime) -> list[str]:
    """The numbers held at some instant of [``start``, ``end``) (an invoice's month), in
    the order they came, from the account's changes (:func:`number_changes`, in log order).

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> day = lambda d: datetime(2026, 3, d, tzinfo=timezone.utc)
    >>> changes = [("A", "in", day(1)), ("B", "in", day(1)), ("B", "out", day(10)), ("C", "in", day(20))]
    >>> numbers_held(changes, day(2), day(15)), numbers_held(changes, day(11), day(31))
    (['A', 'B'], ['A', 'C'])
    """
    since: dict[str, datetime] = {}
    held: dict[str, bool] = {}
    for number, change, at in changes:
        if change == "in":
            since.setdefault(number, at)
            held.setdefault(number, False)
            continue
        for gone in list(since) if number == "*" else [number]:
            came = since.pop(gone, None)
            if came is not None and came < end and at > start:
                held[gone] = True
    for number, came in since.items():
        if came < end:
            held[number] = True
    return [number for number, was in held.items() if was]


def record_calls(
    billing: dict[str, Any], month: str, call_class: str, units: int, calls: int, seconds: int, credit_used: int,
    key: str | None = None,
) -> None:
    """Add a round's rated calls of one month and class: ``units`` from the balance (what
    the package credit paid was invoiced with the package: a memo only). ``key``: the
    line's key ``month|calls|class`` when the caller has it made (the worker's fold, for
    thousands of rows a batch: the plain dict steps below are its cost)."""
    pending = billing.get("pending")
    if pending is None:
        pending = billing["pending"] = {}
    if calls or units:
        key = key or f"{month}|calls|{call_class}"
        values = pending.get(key)
        if values is None:
            pending[key] = [units, calls, seconds]
        else:
            values[0] += units
            values[1] += calls
            values[2] += seconds
    if credit_used:
        _add(billing, month, MEMO, "credit_drawn", credit_used, 0, 0, -1)


def _add(billing: dict[str, Any], month: str, kind: str, item: str, units: int, quantity: int, seconds: int,
         offset: int) -> None:
    lines = billing.setdefault("pending", {})
    if kind in ADJUSTMENTS:
        covering = _covering(billing, month)
        if covering is not None:
            key = f"{offset}/{covering[1]}"
            note = billing.setdefault("notes", {}).setdefault(
                key, {"corrects_month": covering[0], "corrects": covering[1], "lines": {}}
            )
            lines = note["lines"]
    key = f"{month}|{kind}|{item}"
    values = lines.setdefault(key, [0, 0, 0])
    values[0] += units
    values[1] += quantity
    values[2] += seconds


def _covering(billing: Mapping[str, Any], month: str) -> tuple[str, str] | None:
    """The invoice that took ``month``'s charges: the first issued of a month at or after it."""
    invoiced = sorted(m for m in billing.get("invoices", {}) if m >= month)
    return (invoiced[0], billing["invoices"][invoiced[0]]) if invoiced else None


def forget(billing: dict[str, Any], month: str) -> None:
    """Drop what is older than ``month`` (the book's memory, rating.ledger): charges of
    older months no invoice took, invoices and notes of older months."""
    if not billing:
        return
    billing["pending"] = {k: v for k, v in billing.get("pending", {}).items() if k[:7] >= month}
    billing["invoices"] = {m: n for m, n in billing.get("invoices", {}).items() if m >= month}
    billing["notes"] = {k: v for k, v in billing.get("notes", {}).items() if v["corrects_month"] >= month}
    billing["notes_issued"] = {k: v for k, v in billing.get("notes_issued", {}).items() if v[1] >= month}


# ---------------------------------------------------------------------------- issuing


def issue(
    billing: dict[str, Any],
    request: InvoiceRequest,
    *,
    account_id: str,
    at: datetime,
    zone: ZoneInfo,
    plan_id: str,
    numbers: Callable[[str], list[str]],
    version_of: VersionOf,
) -> InvoiceDocument | None:
    """Issue the document ``request`` asks for from what ``billing`` holds; None when it
    was issued already (a repeat: the same number, nothing changes).

    An invoice takes every pending charge of its month and earlier; a note the charges
    waiting for it (none: a note of 0.00, never a missing number). ``numbers`` gives the
    400 numbers the account held in a month "YYYY-MM" (the buyer's: the invoice's month,
    or the month a note corrects).
    """
    local = at.astimezone(zone)
    if request.kind == "invoice":
        if request.month in billing.get("invoices", {}):
            return None
        pending = billing.get("pending", {})
        taken = {key: values for key, values in pending.items() if key[:7] <= request.month}
        billing["pending"] = {key: values for key, values in pending.items() if key not in taken}
        billing.setdefault("invoices", {})[request.month] = request.number
        return build_document(
            taken, request.table, version_of, plan_id=plan_id, account_id=account_id, numbers=numbers(request.month),
            month=request.month, number=request.number, kind="invoice", issued_at=local,
        )
    key = f"{request.source_offset}/{request.corrects}"
    if key in billing.get("notes_issued", {}):
        return None
    note = billing.get("notes", {}).pop(key, None) or {"lines": {}, "corrects_month": ""}
    applied = local.strftime("%Y-%m")
    billing.setdefault("notes_issued", {})[key] = [request.number, max(applied, note["corrects_month"])]
    document = build_document(
        note["lines"], request.table, version_of, plan_id=plan_id, account_id=account_id,
        numbers=numbers(note["corrects_month"] or applied), month=applied, number=request.number, kind="credit_note", issued_at=local,
    )
    kind = "debit_note" if document.totals.gross > 0 else "credit_note"
    return document.model_copy(update={
        "kind": kind, "corrects": request.corrects, "corrects_month": note["corrects_month"] or None,
    })


def build_document(
    lines: Mapping[str, list[int]],
    table: TaxTable,
    version_of: VersionOf,
    *,
    plan_id: str,
    account_id: str,
    numbers: Iterable[str],
    month: str,
    number: str | None,
    kind: str = "invoice",
    issued_at: datetime | None = None,
) -> InvoiceDocument:
    """A document of ``lines`` ("month|kind|item" -> [units, quantity, seconds]) with the
    VAT of each line at its category's rate of the line's month (docs/rules.md):

    - prices include VAT: ``gross`` = the charges rounded half up to the fen, ``tax =
      gross x rate / (1 + rate)`` rounded half up to the fen, ``net = gross - tax``;
    - a version with ``prices_include_tax = false``: ``net`` = the charges to the fen,
      ``tax = net x rate``, ``gross = net + tax``.

    ``version_of`` gives the plan version of a month (``rating.ledger.versions_of``): its
    services' categories and ``prices_include_tax``. ``number`` None makes a draft.
    """
    memo: dict[str, int] = {}
    out: list[InvoiceLine] = []
    for key, (units, quantity, seconds) in lines.items():
        line_month, line_kind, item = key.split("|", 2)
        if line_kind == MEMO:
            memo[item] = memo.get(item, 0) + units
            continue
        if not units and not (line_kind == "calls" and quantity):
            continue  # a charge that came to nothing (a calls line shows its calls even at 0.00)
        version = version_of(line_month)
        category = _category(line_kind, item, version)
        rate = table.rate_at(category, line_month)
        included = version.prices_include_tax if version is not None else True
        if included:
            gross = round_to_fen(units)
            tax = tax_included(gross, rate)
            net = gross - tax
        else:
            net = round_to_fen(units)
            tax = tax_on_top(net, rate)
            gross = net + tax
        out.append(
            InvoiceLine(
                kind=line_kind, item=item, month=line_month,
                description=_describe(line_kind, item, quantity, seconds, line_month, month, included),
                quantity=quantity, seconds=seconds, category=category, rate=rate, gross=gross, tax=tax, net=net,
            )
        )
    out.sort(key=lambda line: (line.month, LINE_KINDS.index(line.kind), line.item))
    by_rate: dict[Decimal, list[int]] = {}
    for line in out:
        sums = by_rate.setdefault(line.rate, [0, 0, 0])
        sums[0] += line.gross
        sums[1] += line.tax
        sums[2] += line.net
    return InvoiceDocument(
        invoice_no=number,
        kind=kind,  # type: ignore[arg-type]
        status="draft" if number is None else "issued",
        account_id=account_id,
        month=month,
        issued_at=issued_at,
        seller=table.seller if isinstance(table.seller, Seller) else Seller.model_validate(table.seller),
        buyer=Buyer(account_id=account_id, plan_id=plan_id, numbers=list(numbers)),
        lines=out,
        totals=Totals(
            gross=sum(line.gross for line in out), tax=sum(line.tax for line in out), net=sum(line.net for line in out)
        ),
        vat=[VatLine(rate=rate, gross=g, tax=t, net=n) for rate, (g, t, n) in sorted(by_rate.items(), reverse=True)],
        memo={key: value for key, value in sorted(memo.items()) if value},
    )


def tax_included(gross: int, rate: Decimal) -> int:
    """The VAT inside ``gross`` (units, whole fen): ``gross x rate / (1 + rate)`` rounded
    half up (away from zero) to the fen.

    Examples
    --------
    >>> tax_included(1_090_000, Decimal("0.09")), tax_included(106_000, Decimal("0.06"))
    (90000, 6000)
    >>> tax_included(-1_090_000, Decimal("0.09"))
    -90000
    """
    share = Fraction(rate)
    return _fen_half_up(Fraction(gross, UNITS_PER_FEN) * share / (1 + share))


def tax_on_top(net: int, rate: Decimal) -> int:
    """The VAT on ``net`` (units, whole fen): ``net x rate`` rounded half up to the fen.

    >>> tax_on_top(1_000_000, Decimal("0.09")), tax_on_top(15_000, Decimal("0.06"))
    (90000, 900)
    """
    return _fen_half_up(Fraction(net, UNITS_PER_FEN) * Fraction(rate))


def _fen_half_up(fen: Fraction) -> int:
    """Fen (a fraction) rounded half away from zero, as units."""
    sign = -1 if fen < 0 else 1
    whole = (2 * abs(fen.numerator) + fen.denominator) // (2 * fen.denominator)
    return sign * whole * UNITS_PER_FEN


def _category(kind: str, item: str, version: Any) -> str:
    """Every charge is a basic telecom service but services: each the category its plan
    gives it, else value-added (docs/rules.md)."""
    if kind != "service":
        return "basic_telecom"
    service = version.services.get(item) if version is not None else None
    return (service.tax_category if service is not None else None) or DEFAULT_SERVICE_CATEGORY


def _describe(kind: str, item: str, quantity: int, seconds: int, line_month: str, month: str, included: bool) -> str:
    if kind == "calls":
        hundredths = (seconds * 100 * 2 + 60) // 120
        text = (f"{item.replace('_', ' ')} calls: {quantity} call{'' if quantity == 1 else 's'}, "
                f"{hundredths // 100}.{hundredths % 100:02d} min")
    elif kind == "service":
        text = f"{item} service" + (f" x {quantity}" if quantity > 1 else "")
    elif kind == "selection_fee":
        text = f"selection fee of {item}"
    elif kind == "package":
        text = f"package {item}" + (f" x {quantity}" if quantity > 1 else "")
    elif kind == "sla_credit":
        text = f"SLA credit for {item}"
    elif kind == "correction":
        text = f"correction {item} of {quantity} call(s)"
    else:
        text = _DESCRIPTIONS[kind] + (f" of {item}" if item else "") + (f" x {quantity}" if quantity > 1 else "")
    if line_month != month:
        text += f" ({line_month})"
    return text if included else text + " (price before VAT)"
