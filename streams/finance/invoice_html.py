"""A printable page of one invoice, credit note or debit note (``cdrflow invoice --out``).

One self-contained HTML file (no script, no network): the seller and the buyer, the
document's number, kind and dates, its lines with their VAT category, rate, gross, tax and
net, the VAT summary per rate and the totals, sized for A4. A draft says so across the
page and has no number.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from schemas.invoices import InvoiceDocument, format_fen, format_rate, round_to_fen
from streams.cdr_files import replace_output

# English words only: the page must read on a machine without CJK fonts.
_TITLES = {"invoice": "Invoice", "credit_note": "Credit note", "debit_note": "Debit note"}
_MEMO = {
    "credit_drawn": "Package credit used by calls and floors (invoiced with the package)",
    "credit_forfeited": "Package credit forfeited at the end of its term (invoiced with the package)",
}


def render(document: InvoiceDocument) -> str:
    """The page of ``document``."""
    draft = document.status == "draft"
    title = ("DRAFT " if draft else "") + _TITLES[document.kind]
    number = escape(document.invoice_no or "(draft: no number)")
    issued = document.issued_at.strftime("%Y-%m-%d %H:%M %z") if document.issued_at else "not issued"
    seller, buyer = document.seller, document.buyer
    rows = "\n".join(
        f"<tr><td>{index}</td><td>{escape(line.description)}</td><td>{escape(line.month)}</td>"
        f"<td>{escape(line.category.replace('_', ' '))}</td><td class=num>{format_rate(line.rate)}</td>"
        f"<td class=num>{format_fen(line.net)}</td><td class=num>{format_fen(line.tax)}</td>"
        f"<td class=num>{format_fen(line.gross)}</td></tr>"
        for index, line in enumerate(document.lines, start=1)
    ) or '<tr><td colspan="8">no line</td></tr>'
    vat = "\n".join(
        f"<tr><td>VAT {format_rate(line.rate)}</td><td class=num>{format_fen(line.net)}</td>"
        f"<td class=num>{format_fen(line.tax)}</td><td class=num>{format_fen(line.gross)}</td></tr>"
        for line in document.vat
    )
    memo = "".join(
        f"<li>{escape(_MEMO.get(key, key))}: {format_fen(round_to_fen(value))} CNY</li>"
        for key, value in document.memo.items()
    )
    corrects = (
        f"<p class=ref>Corrects invoice <b>{escape(document.corrects)}</b> of {escape(document.corrects_month or '')}</p>"
        if document.corrects else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)} {number}</title>
<style>
@page {{ size: A4; margin: 15mm; }}
body {{ font-family: sans-serif; font-size: 11pt; color: #111; margin: 1.5em; }}
h1 {{ font-size: 18pt; margin: 0 0 .3em 0; }}
.parties {{ display: flex; gap: 2em; margin: 1em 0; }}
.party {{ flex: 1; border: 1px solid #999; padding: .6em; }}
.party h2 {{ font-size: 11pt; margin: 0 0 .3em 0; }}
table {{ border-collapse: collapse; width: 100%; margin: .8em 0; }}
th, td {{ border: 1px solid #999; padding: .25em .4em; text-align: left; }}
th {{ background: #eee; }}
.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.totals td {{ font-weight: bold; }}
.draft {{ position: fixed; top: 40%; left: 10%; font-size: 90pt; color: rgba(200, 0, 0, .18);
         transform: rotate(-30deg); pointer-events: none; }}
</style>
</head>
<body>
{'<div class="draft">DRAFT</div>' if draft else ''}
<h1>{escape(title)}</h1>
<p class=meta>No. <b id="invoice-no">{number}</b> &middot; month {escape(document.month)} &middot; issued {escape(issued)}</p>
{corrects}
<div class="parties">
<div class="party"><h2>Seller</h2>{escape(seller.name)}<br>Tax id {escape(seller.tax_id)}<br>{escape(seller.address)}</div>
<div class="party"><h2>Buyer</h2>Account {escape(buyer.account_id)}<br>Plan {escape(buyer.plan_id)}<br>400 numbers {escape(', '.join(buyer.numbers))}</div>
</div>
<table id="lines">
<thead><tr><th>#</th><th>Item</th><th>Month</th><th>VAT category</th><th class=num>Rate</th>
<th class=num>Net (CNY)</th><th class=num>VAT (CNY)</th><th class=num>Gross (CNY)</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
<table id="vat">
<thead><tr><th>VAT summary</th><th class=num>Net</th><th class=num>VAT</th><th class=num>Gross</th></tr></thead>
<tbody>
{vat}
<tr class="totals"><td>Total</td><td class=num>{format_fen(document.totals.net)}</td>
<td class=num>{format_fen(document.totals.tax)}</td><td class=num id="total">{format_fen(document.totals.gross)}</td></tr>
</tbody>
</table>
{f'<ul class="memo">{memo}</ul>' if memo else ''}
<p class=note>Amounts in CNY. Prices include VAT unless a line says "price before VAT".</p>
</body>
</html>
"""


def write_page(document: InvoiceDocument, out: Path) -> Path:
    """Write the page of ``document`` to ``out`` (replaced whole, never through a link:
    :func:`streams.cdr_files.replace_output`); return ``out``."""
    page = render(document)
    replace_output(out, lambda handle: handle.write(page.encode("utf-8")))
    return out
