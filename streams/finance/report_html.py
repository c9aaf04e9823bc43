"""``cdrflow report html``: one self-contained page of a month's finance charts (plotly).

The page carries plotly's JavaScript inline, so it opens without a network. Its charts:
daily revenue by class, revenue by segment, top accounts, missed calls by hour, call
origin by province, rejects by reason; and a VAT panel (the output VAT of the month's
invoices and notes, per rate). The figures come from :mod:`streams.finance.reports` (the
same deduplicated queries as the CLI's reports); money is converted to CNY only to be
drawn, and every bar's exact amount is in its hover text.
"""

from __future__ import annotations

from collections import defaultdict
from html import escape
from pathlib import Path

import plotly.graph_objects as go
from clickhouse_driver import Client
from plotly.io import to_html

from schemas.money import UNITS_PER_CNY, format_money
from streams.cdr_files import replace_output
from streams.finance import reports

#: How many accounts the "top accounts" chart shows.
TOP_ACCOUNTS = 10


def write_report(client: Client, month: str, out: Path) -> Path:
    """Write the month's page to ``out`` (replaced); return ``out``.

    Raises
    ------
    streams.finance.reports.ReportError
        A bad month.
    OSError
        ``out`` cannot be written.
    """
    first, following = reports.month_range(month)
    last = following.fromordinal(following.toordinal() - 1)
    figures = [
        _daily_by_class(reports.daily_revenue_by_class(client, month)),
        _bars(
            "Revenue by segment (CNY)",
            [(row["segment"], row["amount"]) for row in reports.revenue(client, first, last, "segment").raw_rows],
            money=True,
        ),
        _bars(
            f"Top {TOP_ACCOUNTS} accounts by revenue (CNY)",
            sorted(
                ((row["account"], row["amount"]) for row in reports.revenue(client, first, last, "account").raw_rows),
                key=lambda pair: -pair[1],
            )[:TOP_ACCOUNTS],
            money=True,
        ),
        _bars(
            "Missed calls by local hour",
            [(f"{row['hour']:02d}", row["missed"]) for row in reports.missed_calls(client, month, "hour").raw_rows],
        ),
        _bars("Call origin by province (answered calls)", _by_province(reports.usage(client, month, "origin"))),
        _bars("Rejected lines by reason (landed this month)", reports.rejects_by_reason(client, month)),
    ]
    vat = reports.tax(client, first, last)
    charts = []
    for index, figure in enumerate(figures):
        # The first chart carries plotly's JS inline; the others use it.
        charts.append(to_html(figure, full_html=False, include_plotlyjs=index == 0, div_id=f"chart-{index}"))
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cdrflow finance report {escape(month)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fff; }}
.charts {{ display: grid; grid-template-columns: repeat(2, minmax(420px, 1fr)); gap: 1em; }}
.vat-panel table {{ border-collapse: collapse; }}
.vat-panel th, .vat-panel td {{ border: 1px solid #bbb; padding: .3em .6em; text-align: right; }}
</style>
</head>
<body>
<h1>cdrflow finance report, {escape(month)}</h1>
<p>Local days {first} to {last} (each account's plan timezone); replays counted once (FINAL reads).</p>
<div class="charts">
{"".join(f'<div class="chart">{chart}</div>' for chart in charts)}
</div>
{_vat_panel(vat, month)}
</body>
</html>
"""
    replace_output(out, lambda handle: handle.write(page.encode("utf-8")))
    return out


def _vat_panel(vat: reports.Report, month: str) -> str:
    """The VAT panel: output VAT of the invoices and notes issued in the month, per rate."""
    rows = "".join(
        f"<tr><td>{escape(row['category'].replace('_', ' '))}</td><td>{escape(row['rate'])}</td>"
        f"<td>{row['documents']}</td><td>{row['gross']}</td><td>{row['tax']}</td><td>{row['net']}</td></tr>"
        for row in vat.rows()
    ) or '<tr><td colspan="6">no invoice issued this month</td></tr>'
    return f"""<div class="vat-panel" id="vat">
<h2>VAT of the invoices and notes issued in {escape(month)} (CNY)</h2>
<table><thead><tr><th>category</th><th>rate</th><th>documents</th><th>gross</th><th>VAT</th><th>net</th></tr></thead>
<tbody>{rows}</tbody></table>
</div>"""


def _layout(figure: go.Figure, title: str) -> go.Figure:
    figure.update_layout(title=title, height=380, margin={"l": 50, "r": 20, "t": 50, "b": 60}, template="plotly_white")
    return figure


def _daily_by_class(rows: list[tuple[object, str, int]]) -> go.Figure:
    by_class: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for day, call_class, amount in rows:
        by_class[call_class].append((str(day), amount))
    figure = go.Figure(
        [
            go.Bar(
                name=call_class,
                x=[day for day, _ in points],
                y=[amount / UNITS_PER_CNY for _, amount in points],
                hovertext=[format_money(amount) for _, amount in points],
            )
            for call_class, points in sorted(by_class.items())
        ]
    )
    figure.update_layout(barmode="stack")
    return _layout(figure, "Daily revenue by class (CNY)")


def _bars(title: str, pairs: list[tuple[str, int]], *, money: bool = False) -> go.Figure:
    labels = [str(label) for label, _ in pairs]
    values = [value / UNITS_PER_CNY if money else value for _, value in pairs]
    hover = [format_money(value) if money else str(value) for _, value in pairs]
    figure = go.Figure([go.Bar(x=labels, y=values, hovertext=hover)])
    if not pairs:
        figure.add_annotation(text="nothing this month", showarrow=False, font={"size": 16})
    return _layout(figure, title)


def _by_province(origin: reports.Report) -> list[tuple[str, int]]:
    calls: dict[str, int] = defaultdict(int)
    for row in origin.raw_rows:
        calls[row["province"]] += row["calls"]
    return sorted(calls.items(), key=lambda pair: (-pair[1], pair[0]))
