"""``cdrflow invoice``'s work: issue each document once, numbered; drafts; notes (issue 24).

The rules are pure and live in ``rating.invoicing`` (docs/rules.md "Invoices and VAT");
this module checks, numbers, publishes and reads back:

1. **Check** what ClickHouse holds of the account (the fold's projections): the month
   closed for it (``MonthClosed``), not invoiced yet, no later month invoiced, something
   to invoice (the draft has a line). An open month gives a draft, never a number.
2. **Number** (``streams.ledger.invoice_numbers``): one request per document on the
   seller's sequence; the reply also lists documents numbered by an earlier run that
   died before issuing them, which are issued now with their numbers.
3. **Issue**: one ``invoice`` ledger command per document on its account's log; the
   worker's fold freezes the document (``InvoiceIssued`` / ``CreditNoteIssued`` /
   ``DebitNoteIssued`` carry it whole), and a repeat issues nothing.
4. **Read back** the documents from ``billing_events`` once the worker folded them.

A draft is made here from ClickHouse (:func:`draft`): the charges of the month and of
earlier months no invoice took, as the log holds them now, with the same lines and VAT
rules as the fold's documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Final

from clickhouse_driver import Client

from rating.invoicing import ADJUSTMENTS, build_document, event_charges, number_changes, numbers_held
from rating.ledger import LEDGER_MEMORY_MONTHS, month_bounds, versions_of
from schemas.invoices import InvoiceDocument, InvoiceRequest, TaxTable, document_id, format_fen
from schemas.ledger import LedgerCommand, LedgerEvent
from streams.ledger import commands as ops
from streams.ledger.invoice_numbers import NumberRequest, allocate, requests_of
from streams.settings import Settings
from tariffs import Tariffs
from tariffs.tax import load_tax_rates

#: The events that issue a document.
DOCUMENT_EVENTS: Final[tuple[str, ...]] = ("InvoiceIssued", "CreditNoteIssued", "DebitNoteIssued")
#: Month-close charges: a month closed before issue 24 (no MonthClosed) shows by them.
_CLOSE_KINDS: Final = ("MonthClosed", "RentCharged", "ServiceFeeCharged", "MinimumSpendTrueUp", "KeepNumberFeeCharged")


class InvoiceRefused(Exception):
    """The document cannot be issued; nothing was written."""


@dataclass
class Result:
    """One account's answer for a month: its invoice (issued, or a draft), the notes that
    correct it, whether this run issued it, and why there is none."""

    account_id: str
    month: str
    document: InvoiceDocument | None = None
    notes: list[InvoiceDocument] = field(default_factory=list)
    issued_now: bool = False
    skipped: str = ""
    #: no document on purpose (an unknown account, a later month invoiced): exit 3
    refused: bool = False


def tax_table(settings: Settings) -> TaxTable:
    """The tax file of the settings (``CDRFLOW_TAX_RATES``), else the shipped one.

    Raises ``tariffs.TariffError`` naming the file and the field of each problem."""
    return load_tax_rates(settings.tax_rates)


# ---------------------------------------------------------------------------- reads


def documents(db: Client, accounts: Sequence[str] | None = None) -> dict[str, InvoiceDocument]:
    """The documents issued (event id -> document), of some accounts or of all."""
    query = "SELECT event_id, document FROM billing_events FINAL WHERE kind IN %(k)s"
    rows = [] if accounts is not None else db.execute(query, {"k": DOCUMENT_EVENTS})
    for chunk in _chunks(accounts or []):
        rows += db.execute(f"{query} AND account_id IN %(a)s", {"k": DOCUMENT_EVENTS, "a": chunk})
    return {event_id: InvoiceDocument.model_validate_json(text) for event_id, text in rows if text}


def issued_event_ids(db: Client) -> set[str]:
    """The event ids of every document issued (of every account)."""
    return {r[0] for r in db.execute("SELECT DISTINCT event_id FROM billing_events WHERE kind IN %(k)s",
                                     {"k": DOCUMENT_EVENTS})}


def invoices_of(db: Client, accounts: Sequence[str]) -> dict[str, list[tuple[str, str, int]]]:
    """Account -> its invoices issued: (month, number, log offset), by month."""
    found: dict[str, list[tuple[str, str, int]]] = {account: [] for account in accounts}
    for chunk in _chunks(accounts):
        for account, event_id, number, offset in db.execute(
            "SELECT account_id, event_id, reference, `offset` FROM billing_events FINAL "
            "WHERE kind = 'InvoiceIssued' AND account_id IN %(a)s",
            {"a": chunk},
        ):
            found[account].append((event_id[-7:], number, int(offset)))
    for invoices in found.values():
        invoices.sort()
    return found


def closed_accounts(db: Client, accounts: Sequence[str], month: str) -> set[str]:
    """The accounts for which ``close-month`` of ``month`` was folded."""
    found: set[str] = set()
    for chunk in _chunks(accounts):
        found.update(r[0] for r in db.execute(
            "SELECT DISTINCT account_id FROM billing_events WHERE account_id IN %(a)s AND kind IN %(k)s "
            "AND month = %(m)s",
            {"a": chunk, "k": _CLOSE_KINDS, "m": month},
        ))
    return found


def _events(db: Client, accounts: tuple[str, ...], since: str) -> dict[str, list[tuple[LedgerEvent, int]]]:
    """Each account's events with money or credit of months >= ``since``, with their offsets."""
    rows = db.execute(
        "SELECT account_id, event_id, kind, effective_time, effective_us, amount, credit_change, reference, `offset` "
        "FROM billing_events FINAL WHERE account_id IN %(a)s AND (amount != 0 OR credit_change != 0) "
        "AND month >= %(since)s",
        {"a": accounts, "since": since},
    )
    found: dict[str, list[tuple[LedgerEvent, int]]] = {}
    for account, event_id, kind, at, us, amount, credit_change, reference, offset in rows:
        event = LedgerEvent(
            event_id=event_id, account_id=account, kind=kind, at=at.replace(tzinfo=timezone.utc, microsecond=int(us)),
            amount=int(amount), balance=0, credit_change=int(credit_change), reference=reference,
        )
        found.setdefault(account, []).append((event, int(offset)))
    return found


def _calls(
    db: Client, accounts: tuple[str, ...], first: date, following: date, last: Mapping[str, tuple[str, int]]
) -> dict[str, list[tuple[str, str, int, int, int, int]]]:
    """Account -> (month, class, calls, billable seconds, amount, credit used) of its rated
    calls of local days [first, following) that no invoice took, as first billed (a
    corrected call at its first rating; one a correction rated, billed as a rejection, not
    at all). ``last``: each invoiced account's last invoice (month, log offset): a call
    is taken when its month is not later and its message came before (invoices go in month
    order)."""
    invoiced = sorted(last)
    params = {"a": accounts, "first": first, "next": following, "ids": invoiced,
              "months": [int(last[a][0].replace("-", "")) for a in invoiced], "offsets": [last[a][1] for a in invoiced]}
    days = "account_id IN %(a)s AND status = 'rated' AND local_day >= %(first)s AND local_day < %(next)s"
    if invoiced:  # (transform wants arrays of a type: not empty ones)
        days += (" AND (toYYYYMM(local_day) > transform(account_id, %(ids)s, %(months)s, 0) "
                 "OR `offset` > transform(account_id, %(ids)s, %(offsets)s, -1))")
    keys = "account_id, toYYYYMM(local_day) AS m, class"
    rows = db.execute(
        f"SELECT {keys}, count(), sum(billable_s), sum(amount), sum(credit_used) FROM rated_calls FINAL "
        f"WHERE {days} AND (account_id, cdr_id) NOT IN (SELECT account_id, cdr_id FROM rated_call_versions "
        "WHERE account_id IN %(a)s) GROUP BY account_id, m, class",
        params,
    ) + db.execute(
        f"SELECT {keys}, count(), sum(billable_s), sum(amount), 0 FROM rated_call_versions FINAL "
        f"WHERE {days} AND version = 0 GROUP BY account_id, m, class",
        params,
    ) + db.execute(
        f"SELECT {keys}, 0, 0, 0, sum(credit_used) FROM rated_calls FINAL WHERE {days} "
        "AND (account_id, cdr_id) IN (SELECT account_id, cdr_id FROM rated_call_versions "
        "WHERE account_id IN %(a)s AND version = 0) GROUP BY account_id, m, class",
        params,
    )
    found: dict[str, list[tuple[str, str, int, int, int, int]]] = {}
    for account, m, call_class, calls, seconds, amount, credit_used in rows:
        found.setdefault(account, []).append(
            (f"{int(m) // 100:04d}-{int(m) % 100:02d}", call_class, int(calls), int(seconds), int(amount),
             int(credit_used))
        )
    return found


def _plans(db: Client, accounts: tuple[str, ...]) -> dict[str, str]:
    """Account -> its plan, of the accounts the worker has folded."""
    return dict(db.execute(
        "SELECT account_id, argMax(plan_id, version) FROM account_balances WHERE account_id IN %(a)s "
        "GROUP BY account_id",
        {"a": accounts},
    ))


def _number_changes(db: Client, accounts: tuple[str, ...]) -> dict[str, list[tuple[str, str, datetime]]]:
    """Account -> its 400 numbers coming and going, in log order (the fold's record,
    ``rating.invoicing.number_changes``): opened with, transferred, released, closed."""
    rows = db.execute(
        "SELECT account_id, event_id, kind, effective_time, effective_us, reference, transferred_to "
        "FROM billing_events FINAL WHERE account_id IN %(a)s AND kind IN %(k)s ORDER BY `offset`, effective_time, "
        "effective_us",
        {"a": accounts, "k": ("AccountOpened", "NumberTransferred", "NumberReleased", "AccountClosed")},
    )
    found: dict[str, list[tuple[str, str, datetime]]] = {}
    for account, event_id, kind, at, us, reference, transferred_to in rows:
        event = LedgerEvent(
            event_id=event_id, account_id=account, kind=kind, at=at.replace(tzinfo=timezone.utc, microsecond=int(us)),
            amount=0, balance=0, reference=reference, transferred_to=transferred_to,
        )
        found.setdefault(account, []).extend(number_changes(event))
    return found


# ---------------------------------------------------------------------------- drafts


def draft(db: Client, catalog: Tariffs, table: TaxTable, account_id: str, month: str) -> InvoiceDocument:
    """What the account's invoice of ``month`` would hold if it were issued now (no
    number): :func:`drafts` of one account.

    Raises ``InvoiceRefused`` (an unknown account) or ``ValueError`` (no rate for a month)."""
    found = drafts(db, catalog, table, [account_id], month)[account_id]
    if isinstance(found, Exception):
        raise found
    return found


def drafts(
    db: Client, catalog: Tariffs, table: TaxTable, accounts: Sequence[str], month: str
) -> dict[str, InvoiceDocument | Exception]:
    """Each account's invoice of ``month`` as it would be issued now (no number): the
    charges of the month and of earlier months no invoice took, as ClickHouse holds the
    log (the fold's rule, rating.invoicing), within the book's memory
    (LEDGER_MEMORY_MONTHS months before ``month``); or why there is none
    (``InvoiceRefused``: an unknown account; ``ValueError``: a month without a rate).
    Read a thousand accounts at a time."""
    since = _month_shift(month, -LEDGER_MEMORY_MONTHS)
    first = date(int(since[:4]), int(since[5:7]), 1)
    following = date(int(month[:4]) + int(month[5:7]) // 12, int(month[5:7]) % 12 + 1, 1)
    out: dict[str, InvoiceDocument | Exception] = {}
    for chunk in _chunks(accounts):
        plans = _plans(db, chunk)
        invoices = invoices_of(db, chunk)
        last = {a: (found[-1][0], max(o for _, _, o in found)) for a, found in invoices.items() if found}
        calls = _calls(db, chunk, first, following, last)
        events = _events(db, chunk, since)
        numbers = _number_changes(db, chunk)
        for account in chunk:
            try:
                plan = _plan(catalog, account, plans.get(account))
            except InvoiceRefused as error:
                out[account] = error
                continue
            lines: dict[str, list[int]] = {}

            def add(key: str, units: int, quantity: int, seconds: int) -> None:
                values = lines.setdefault(key, [0, 0, 0])
                values[0] += units
                values[1] += quantity
                values[2] += seconds

            for charge_month, call_class, count, seconds, amount, credit_used in calls.get(account, []):
                add(f"{charge_month}|calls|{call_class}", amount - credit_used, count, seconds)
                if credit_used:
                    add(f"{charge_month}|memo|credit_drawn", credit_used, 0, 0)
            taken_to, taken_at = last.get(account, ("", -1))
            for event, offset in events.get(account, []):
                for charge_month, kind, item, units, quantity in event_charges(event, plan.zone):
                    if not since <= charge_month <= month:
                        continue
                    # taken by an invoice: a charge of an invoiced month before it; an
                    # adjustment of an invoiced month waits for a note instead
                    if charge_month <= taken_to and (kind in ADJUSTMENTS or offset < taken_at):
                        continue
                    add(f"{charge_month}|{kind}|{item}", units, quantity, 0)
            try:
                out[account] = build_document(
                    {key: v for key, v in lines.items() if v[0] or (v[1] and "|calls|" in key)}, table,
                    versions_of(plan), plan_id=plan.id, account_id=account,
                    numbers=numbers_held(numbers.get(account, []), *month_bounds(month, plan.zone)),
                    month=month, number=None,
                )
            except ValueError as error:
                out[account] = error
    return out


# ---------------------------------------------------------------------------- notes


def pending_notes(db: Client, accounts: Sequence[str], seller: str, *, since: str) -> list[NumberRequest]:
    """The notes waiting to be issued: corrections and SLA credits of months an invoice
    took, applied after it, grouped as the fold groups them (per command and invoice)."""
    if not accounts:
        return []
    invoices = invoices_of(db, accounts)
    issued = set(documents(db, accounts))
    rows = [
        row
        for chunk in _chunks(accounts)
        for row in db.execute(
            "SELECT account_id, event_id, kind, amount, reference, `offset` FROM billing_events FINAL "
            "WHERE account_id IN %(a)s AND kind IN ('CallRerated', 'SlaCreditGranted') AND month >= %(since)s",
            {"a": chunk, "since": since},
        )
    ]
    wanted: dict[tuple[str, int, str], NumberRequest] = {}
    for account, event_id, kind, amount, reference, offset in rows:
        charge_month = reference[:7]
        before = [(m, number) for m, number, o in invoices.get(account, []) if m >= charge_month and o < int(offset)]
        if not before:
            continue  # on the next invoice
        corrects = min(before)[1]
        key = (account, int(offset), corrects)
        note_events = {f"{account}/{k}/{int(offset)}/{corrects}" for k in ("CreditNoteIssued", "DebitNoteIssued")}
        if key in wanted or note_events & issued:
            continue
        wanted[key] = NumberRequest(
            seller, document_id(account, source_offset=int(offset), corrects=corrects), account, "note",
            source_offset=int(offset), corrects=corrects,
        )
    return list(wanted.values())


# ---------------------------------------------------------------------------- issuing


def issue(
    settings: Settings,
    db: Client,
    catalog: Tariffs,
    table: TaxTable,
    accounts: Sequence[str],
    month: str,
    at: datetime,
    *,
    wait_s: float = ops.WAIT_S,
    sweep: bool = False,
) -> list[Result]:
    """Each account's invoice of ``month``: issued now if it can be (module docstring),
    shown as issued if it was, a draft if the month is open; with the notes that correct
    it. Issues too the notes waiting for these accounts and, when it asks for a number (or
    ``sweep``: ``--all``), any document an earlier run numbered and did not issue (reading
    the sequence costs ~7 s a year of 20k accounts' invoices: a run that only shows issued
    invoices does not).

    Raises ``BrokerError`` / ``TimeoutError`` when the broker or the worker does not answer.
    """
    seller = table.seller.id
    results: dict[str, Result] = {}
    wanted: list[NumberRequest] = []
    issued = documents(db, accounts)
    invoices = invoices_of(db, accounts)
    waiting = [account for account in accounts if f"{account}/InvoiceIssued/{month}" not in issued]
    shown_now = drafts(db, catalog, table, waiting, month)
    closed = closed_accounts(db, waiting, month)
    for account in accounts:
        result = results[account] = Result(account, month)
        event_id = f"{account}/InvoiceIssued/{month}"
        if event_id in issued:
            result.document = issued[event_id]
            continue
        shown = shown_now[account]
        if isinstance(shown, InvoiceRefused):
            result.skipped, result.refused = str(shown), True
            continue
        if isinstance(shown, Exception):  # the tax file has no rate for a month of it
            result.skipped, result.refused = f"{shown}: add it to the tax file", True
            continue
        if account not in closed:
            result.document = shown
            continue
        later = [(m, number) for m, number, _ in invoices[account] if m > month]
        if later:
            result.refused = True
            result.skipped = (
                f"the invoice of {later[0][0]} ({later[0][1]}) was issued already: invoices go in month order, "
                f"and {month}'s charges are on it or on an earlier one"
            )
            continue
        if not shown.lines:
            result.skipped = f"nothing to invoice in {month}: no charge waits for an invoice"
            continue
        wanted.append(NumberRequest(seller, document_id(account, month=month), account, "invoice", month))
    wanted.extend(pending_notes(db, accounts, seller, since=_month_shift(month, -LEDGER_MEMORY_MONTHS)))
    published = _issue_numbered(settings, db, table, wanted, at, wait_s=wait_s) if wanted or sweep else {}
    issued = documents(db, accounts)
    mine = _issued_by(db, published)
    notes: dict[str, list[InvoiceDocument]] = {}
    for document in sorted(issued.values(), key=lambda d: d.invoice_no or ""):
        if document.corrects:
            notes.setdefault(document.corrects, []).append(document)
    for account, result in results.items():
        event_id = f"{account}/InvoiceIssued/{month}"
        if event_id in issued:
            result.issued_now = result.document is None and event_id in mine
            result.document = issued[event_id]
        if result.document is not None and result.document.invoice_no is not None:
            result.notes = notes.get(result.document.invoice_no, [])
        elif result.document is None and not result.skipped:
            result.skipped = _refusal(db, account, published.get(event_id, ("", -1))[0]) or "not issued"
    return list(results.values())


def issue_notes(
    settings: Settings, db: Client, table: TaxTable, accounts: Sequence[str], at: datetime, *, wait_s: float = ops.WAIT_S
) -> list[InvoiceDocument]:
    """Issue the notes waiting for these accounts (after ``rerate --apply`` or an SLA
    credit of an invoiced month); the notes issued now."""
    since = _month_shift(at.strftime("%Y-%m"), -LEDGER_MEMORY_MONTHS)
    wanted = pending_notes(db, accounts, table.seller.id, since=since)
    if not wanted:
        return []
    published = _issue_numbered(settings, db, table, wanted, at, wait_s=wait_s)
    issued = documents(db, accounts)
    return [issued[event_id] for event_id in _issued_by(db, published) if event_id in issued]


def notes_after(
    settings: Settings, accounts: Sequence[str], at: datetime, *, wait_s: float = ops.WAIT_S
) -> tuple[list[InvoiceDocument], str]:
    """After a correction or an SLA credit is folded: issue the notes waiting for these
    accounts. Returns the notes issued, and '' or why none could be (the command itself
    is applied either way; the next ``cdrflow invoice`` issues them)."""
    try:
        table = tax_table(settings)
        return issue_notes(settings, ops.client(settings), table, accounts, at, wait_s=wait_s), ""
    except Exception as error:  # TariffError, BrokerError, TimeoutError, ClickHouse: said, not raised
        return [], f"its credit notes were not issued ({str(error).splitlines()[0]}): `cdrflow invoice` issues them"


def note_words(note: InvoiceDocument) -> str:
    """One line about a note, for people."""
    return (f"{note.kind.replace('_', ' ')} {note.invoice_no} of {note.account_id}: {format_fen(note.totals.gross)} CNY "
            f"(VAT {format_fen(note.totals.tax)}), correcting invoice {note.corrects} of {note.corrects_month}")


def _issue_numbered(
    settings: Settings, db: Client, table: TaxTable, wanted: list[NumberRequest], at: datetime, *, wait_s: float
) -> dict[str, tuple[str, int]]:
    """Number ``wanted`` and issue them, with every document of the seller that was
    numbered and not issued; event id -> (command id, log offset) of what was published."""
    numbers = allocate(settings, wanted)
    seller = table.seller.id
    issued = issued_event_ids(db)
    commands = []
    for sequence, request in requests_of(numbers, seller):
        event_ids = _event_ids(request, table.seller.number(sequence))
        if event_ids & issued:
            continue
        document = InvoiceRequest(
            kind=request.kind, sequence=sequence, month=request.month, source_offset=request.source_offset,
            corrects=request.corrects, table=table,
        )
        commands.append(LedgerCommand(kind="invoice", account_id=request.account_id, at=at, document=document))
    if not commands:
        return {}
    published = ops.publish(settings, commands)
    ops.wait_folded(db, published, timeout_s=wait_s)
    out = {}
    for item in published:
        for event_id in _event_ids(_request_of(item.command), item.command.document.number):  # type: ignore[union-attr]
            out[event_id] = (item.command.command_id, item.offset)
    return out


def _issued_by(db: Client, published: dict[str, tuple[str, int]]) -> set[str]:
    """The documents the commands of this run issued (not a copy another run's command
    issued first: the event sits at the offset of the command that issued it)."""
    if not published:
        return set()
    rows = db.execute(
        "SELECT event_id, `offset` FROM billing_events FINAL WHERE event_id IN %(e)s", {"e": tuple(published)}
    )
    return {event_id for event_id, offset in rows if int(offset) == published[event_id][1]}


def _event_ids(request: NumberRequest, number: str) -> set[str]:
    """The ids the event issuing ``request``'s document may have."""
    if request.kind == "invoice":
        return {f"{request.account_id}/InvoiceIssued/{request.month}"}
    about = f"{request.source_offset}/{request.corrects}"
    return {f"{request.account_id}/{kind}/{about}" for kind in ("CreditNoteIssued", "DebitNoteIssued")}


def _request_of(command: LedgerCommand) -> NumberRequest:
    document = command.document
    assert document is not None
    return NumberRequest(document.table.seller.id, document_id(command.account_id, document), command.account_id,
                         document.kind, document.month, document.source_offset, document.corrects)


def _refusal(db: Client, account_id: str, command_id: str) -> str:
    """Why the fold refused a published invoice command (its ``ledger_refused`` row)."""
    if not command_id:
        return ""
    rows = db.execute(
        "SELECT detail FROM rejected_cdrs FINAL WHERE account_id = %(a)s AND reason = 'ledger_refused' "
        "AND cdr_id = %(c)s",
        {"a": account_id, "c": command_id},
    )
    return rows[0][0] if rows else ""


# ---------------------------------------------------------------------------- helpers


def _plan(catalog: Tariffs, account_id: str, plan_id: str | None) -> Any:
    if plan_id is None:
        if all(a.id != account_id for a in catalog.accounts):
            raise InvoiceRefused(f"unknown account {account_id!r}")
        raise InvoiceRefused(f"account {account_id!r} has not been folded by a worker yet: start `cdrflow worker`")
    plan = catalog.plans.get(plan_id)
    if plan is None:
        raise InvoiceRefused(f"plan {plan_id!r} of account {account_id} is not in the catalogue")
    return plan


def _chunks(accounts: Sequence[str], size: int = 1000) -> list[tuple[str, ...]]:
    """Accounts a thousand at a time (a query's list of them stays well under ClickHouse's
    256 kB query size)."""
    return [tuple(accounts[start : start + size]) for start in range(0, len(accounts), size)]


def _month_shift(month: str, months: int) -> str:
    """``YYYY-MM`` moved by ``months``.

    >>> _month_shift("2026-03", -13), _month_shift("2026-12", 1)
    ('2025-02', '2027-01')
    """
    index = int(month[:4]) * 12 + int(month[5:7]) - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def all_accounts(db: Client) -> list[str]:
    """Every account the worker has folded (closed ones too: their last months are invoiced)."""
    return [r[0] for r in db.execute("SELECT DISTINCT account_id FROM account_balances ORDER BY account_id")]
