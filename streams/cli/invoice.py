"""``cdrflow invoice``: an account's (or every account's) invoice of a month, with VAT.

Thin: the work is ``streams.ledger.invoices`` (check, number, issue on the account's log,
read back), the rules ``rating.invoicing`` (docs/rules.md "Invoices and VAT"), the page
``streams.finance.invoice_html``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from schemas.invoices import InvoiceDocument, document_json, format_fen, format_rate, is_month
from streams.cdr_files import CdrFileError, check_outputs, replace_output
from streams.cli._common import ExitCode, JsonOption, StateDirOption, console, errors, fail, parse_instant, settings_or_fail
from streams.kafka.client import BrokerError
from streams.ledger import commands as ops
from streams.ledger import invoices as work
from tariffs import TariffError


def invoice(
    account: Annotated[str | None, typer.Argument(help="The account (or --all).", show_default=False)] = None,
    month: Annotated[str, typer.Option("--month", help="The month, YYYY-MM (the account plan's timezone).")] = "",
    all_: Annotated[bool, typer.Option("--all", help="Every account's invoice of the month.")] = False,
    json_: JsonOption = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write each document as JSON and as a printable HTML page here.")
    ] = None,
    at: Annotated[str | None, typer.Option("--at", help="When it is issued: ISO 8601 with offset (default: now).")] = None,
    wait_s: Annotated[float, typer.Option("--wait-s", help="How long to wait for the worker to fold it.")] = ops.WAIT_S,
    state_dir: StateDirOption = None,
) -> None:
    """The month's invoice: one line per charge kind with its VAT (9% basic telecom, 6%
    value-added), totals and a VAT summary per rate. The first call for a closed month
    issues it with the seller's next number; asking again shows the same invoice. An open
    month gives a draft, never a number. Corrections after it come as credit notes.

    Example: cdrflow invoice ACME --month 2026-03 --out invoices/
    """
    if (account is None) == (not all_):
        raise fail("give an ACCOUNT or --all", ExitCode.BAD_INPUT)
    if not is_month(month):
        raise fail(f"--month: expected YYYY-MM (e.g. 2026-03), got {month!r}", ExitCode.BAD_INPUT)
    if out is not None and not out.is_dir():
        if out.exists() or not out.parent.is_dir():
            raise fail(f"--out {out}: not a folder that exists or can be made", ExitCode.BAD_INPUT)
        out.mkdir()
    instant = parse_instant(at)
    settings = settings_or_fail(state_dir=state_dir)
    try:
        table = work.tax_table(settings)
    except TariffError as error:
        lines = "\n".join(f"  - {p}" for p in error.problems)
        raise fail(f"the tax file is not valid:\n{lines}", ExitCode.BAD_INPUT) from None
    try:
        catalog = ops.catalog(settings)
    except BrokerError as error:
        raise fail(f"{error}; is the stack up (cdrflow up)?", ExitCode.FAILED) from None
    db = ops.client(settings)
    accounts = work.all_accounts(db) if all_ else [account]
    try:
        with errors.status(f"invoices of {month}: {len(accounts):,} account(s)"):
            results = work.issue(settings, db, catalog, table, accounts, month, instant,  # type: ignore[arg-type]
                                 wait_s=wait_s, sweep=all_)
    except (BrokerError, TimeoutError) as error:
        raise fail(str(error), ExitCode.FAILED) from None
    if out is not None:
        try:
            written = _write(out, results)
        except CdrFileError as error:
            raise fail(f"--out {error} (the documents are issued: asking again writes the same ones)",
                       ExitCode.BAD_INPUT) from None
        errors.print(f"wrote {len(written)} file(s) to {out}")
    if all_:
        _print_all(results, month, json_)
        return
    result = results[0]
    if result.document is None:
        if json_:
            console.print_json(json.dumps({"account_id": result.account_id, "month": month, "invoice_no": None,
                                           "skipped": result.skipped}))
        if result.refused:
            raise fail(f"{result.skipped}; nothing was written", ExitCode.REFUSED)
        if not json_:
            console.print(f"{result.account_id} {month}: {result.skipped}")
        return
    if json_:
        console.print_json(json.dumps(_json(result)))
        return
    _print_document(result.document, issued_now=result.issued_now)
    for note in result.notes:
        _print_document(note)


def _json(result: work.Result) -> dict[str, Any]:
    assert result.document is not None
    return {**document_json(result.document), "issued_now": result.issued_now,
            "credit_notes": [document_json(note) for note in result.notes]}


def _print_all(results: list[work.Result], month: str, json_: bool) -> None:
    if json_:
        console.print_json(json.dumps({
            "month": month,
            "documents": [_json(r) for r in results if r.document is not None],
            "skipped": [{"account_id": r.account_id, "reason": r.skipped} for r in results if r.document is None],
        }))
        return
    table = Table(title=f"invoices of {month}", title_justify="left")
    for column in ("account", "invoice", "status", "gross", "VAT", "net", "notes"):
        table.add_column(column, justify="right" if column in ("gross", "VAT", "net") else "left")
    totals = [0, 0, 0]
    for r in results:
        if r.document is None:
            table.add_row(r.account_id, "", "", "", "", "", r.skipped)
            continue
        d = r.document
        status = "draft" if d.status == "draft" else ("issued now" if r.issued_now else "issued")
        if d.status == "issued":
            totals = [totals[0] + d.totals.gross, totals[1] + d.totals.tax, totals[2] + d.totals.net]
        table.add_row(r.account_id, d.invoice_no or "-", status, format_fen(d.totals.gross), format_fen(d.totals.tax),
                      format_fen(d.totals.net), ", ".join(n.invoice_no or "" for n in r.notes))
    table.add_row("[bold]issued total", "", "", *(f"[bold]{format_fen(v)}" for v in totals), "")
    console.print(table)


def _print_document(document: InvoiceDocument, *, issued_now: bool = False) -> None:
    kind = document.kind.replace("_", " ")
    if document.status == "draft":
        title = f"DRAFT {kind} of {document.account_id} for {document.month} (the month is not closed: no number)"
    else:
        when = document.issued_at.isoformat() if document.issued_at else ""
        title = (f"{kind} {document.invoice_no} of {document.account_id} for {document.month}, "
                 f"{'issued now' if issued_now else 'issued'} {when}")
        if document.corrects:
            title += f"; corrects {document.corrects} ({document.corrects_month})"
    table = Table(title=title, title_justify="left")
    for column in ("line", "month", "category", "rate", "gross", "VAT", "net"):
        table.add_column(column, justify="right" if column in ("rate", "gross", "VAT", "net") else "left")
    for line in document.lines:
        table.add_row(line.description, line.month, line.category, format_rate(line.rate), format_fen(line.gross),
                      format_fen(line.tax), format_fen(line.net))
    for vat in document.vat:
        table.add_row(f"[italic]VAT {format_rate(vat.rate)}", "", "", "", format_fen(vat.gross), format_fen(vat.tax),
                      format_fen(vat.net))
    table.add_row("[bold]total", "", "", "", *(f"[bold]{format_fen(v)}" for v in
                  (document.totals.gross, document.totals.tax, document.totals.net)))
    console.print(table)


def _write(folder: Path, results: list[work.Result]) -> list[Path]:
    """Each document as ``<number>.json`` and ``<number>.html`` (a draft: ``draft-ACCOUNT-MONTH``);
    a symbolic link among them refuses them all before any is written (docs/rules.md,
    "Output files")."""
    from streams.finance.invoice_html import write_page

    documents = [
        (document, document.invoice_no or f"draft-{document.account_id}-{document.month}")
        for result in results
        for document in ([result.document] if result.document is not None else []) + result.notes
    ]
    check_outputs([folder / f"{stem}.{suffix}" for _, stem in documents for suffix in ("json", "html")])
    written = []
    for document, stem in documents:
        path = folder / f"{stem}.json"
        text = json.dumps(document_json(document), indent=2, ensure_ascii=False) + "\n"
        replace_output(path, lambda handle, text=text: handle.write(text.encode("utf-8")))
        written += [path, write_page(document, folder / f"{stem}.html")]
    return written
