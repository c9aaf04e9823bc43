"""``cdrflow report ...`` and ``cdrflow retention``: thin typer commands over
:mod:`streams.finance.reports`, :mod:`streams.finance.report_html` and :mod:`streams.finance.retention`.

Reports print a rich table, or ``--format csv|json`` for scripts (JSON: an array of row
objects keyed by column name, money as 4-decimal strings; the statement is one object).
They connect as ``CDRFLOW_CLICKHOUSE_URL`` says (finance: ``clickhouse://finance:...``),
else to the embedded ClickHouse.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from clickhouse_driver import Client
from clickhouse_driver import errors as clickhouse_errors
from rich.table import Table

from schemas.money import format_money
from streams.cli._common import ExitCode, StateDirOption, console, errors, fail, settings_or_fail
from streams.clickhouse.insert import is_retryable
from streams.finance import reports
from streams.settings import Settings

T = TypeVar("T")

report_app = typer.Typer(
    help="Finance reports from ClickHouse: statement, revenue, missed calls, usage, output VAT, HTML.",
    no_args_is_help=True,
)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


class RevenueBy(str, Enum):
    day = "day"
    segment = "segment"
    class_ = "class"
    plan = "plan"
    account = "account"


class RevenueAs(str, Enum):
    corrected = "corrected"
    billed = "billed"


class MissedBy(str, Enum):
    hour = "hour"
    number = "number"


class UsageBy(str, Enum):
    day = "day"
    hour = "hour"
    duration = "duration"
    origin = "origin"


FormatOption = Annotated[Format, typer.Option("--format", help="table (rich), csv or json.")]
MonthOption = Annotated[str, typer.Option("--month", help="The month, YYYY-MM, in the account plan's timezone.")]
AccountFilter = Annotated[
    str | None, typer.Option("--account", help="Only this account (default: all).", show_default=False)
]


@report_app.command("statement")
def statement(
    account: Annotated[str, typer.Option("--account", help="The account id.")],
    month: MonthOption,
    format_: FormatOption = Format.table,
    state_dir: StateDirOption = None,
) -> None:
    """An account's statement of a month: opening balance, charges and credits by kind,
    closing balance (the ledger's balance at the month's end).

    Example: cdrflow report statement --account A001 --month 2026-03 --format json
    """
    found = _query(state_dir, lambda client: reports.statement(client, account, month))
    shown = reports.statement_json(found)
    if format_ is Format.json:
        console.print_json(json.dumps(shown))
        return
    rows = [
        {"kind": "opening balance", "description": "", "amount": shown["opening_balance"],
         "credit": shown["opening_credit"]},
        *({key: line[key] for key in ("kind", "description", "amount", "credit")} for line in shown["lines"]),
        {"kind": "closing balance", "description": "", "amount": shown["closing_balance"],
         "credit": shown["closing_credit"]},
    ]
    title = f"statement of {account} for {month} (calls {shown['calls_amount']} CNY)"
    # package credit (issue 23) gets its column when the account had any
    has_credit = any(row["credit"] != format_money(0) for row in rows)
    columns = ("kind", "description", "amount", "credit") if has_credit else ("kind", "description", "amount")
    _print([{key: row[key] for key in columns} for row in rows], columns, format_, title)


@report_app.command("revenue")
def revenue(
    from_: Annotated[str, typer.Option("--from", help="First local day, YYYY-MM-DD.")],
    to: Annotated[str, typer.Option("--to", help="Last local day (included), YYYY-MM-DD.")],
    by: Annotated[RevenueBy, typer.Option("--by", help="Group by day, segment, class, plan or account.")],
    as_: Annotated[
        RevenueAs,
        typer.Option("--as", help="corrected: calls at their current version (corrections restate their days); "
                     "billed: as first billed."),
    ] = RevenueAs.corrected,
    format_: FormatOption = Format.table,
    state_dir: StateDirOption = None,
) -> None:
    """Revenue of rated calls over local days: calls, billable minutes and amount.

    Example: cdrflow report revenue --from 2026-03-01 --to 2026-03-31 --by segment --as billed
    """
    start, end = _day(from_, "--from"), _day(to, "--to")
    found = _query(
        state_dir, lambda client: reports.revenue(client, start, end, by.value, as_.value)  # type: ignore[arg-type]
    )
    _print_report(found, format_)


@report_app.command("missed-calls")
def missed_calls(
    month: MonthOption,
    by: Annotated[MissedBy, typer.Option("--by", help="Per local hour of day or per 400 number.")],
    account: AccountFilter = None,
    format_: FormatOption = Format.table,
    state_dir: StateDirOption = None,
) -> None:
    """Calls not answered (no answer, busy, failed, congestion) in a month, for staffing
    the call centre: per local hour (0-23) or per 400 number.

    Example: cdrflow report missed-calls --month 2026-03 --by hour
    """
    found = _query(state_dir, lambda client: reports.missed_calls(client, month, by.value, account))  # type: ignore[arg-type]
    _print_report(found, format_)


@report_app.command("usage")
def usage(
    month: MonthOption,
    by: Annotated[UsageBy, typer.Option("--by", help="Per local day, hour of day, duration bucket or caller area.")],
    account: AccountFilter = None,
    format_: FormatOption = Format.table,
    state_dir: StateDirOption = None,
) -> None:
    """What an enterprise watches on its 400 numbers: answered calls and talk minutes per
    day, hour of day, duration (<30 s, 30-60 s, 1-3 min, 3-10 min, >10 min) or origin.

    Example: cdrflow report usage --month 2026-03 --account A001 --by origin
    """
    found = _query(state_dir, lambda client: reports.usage(client, month, by.value, account))  # type: ignore[arg-type]
    _print_report(found, format_)


@report_app.command("tax")
def tax(
    from_: Annotated[str, typer.Option("--from", help="First local day of issue, YYYY-MM-DD.")],
    to: Annotated[str, typer.Option("--to", help="Last local day of issue (included), YYYY-MM-DD.")],
    format_: FormatOption = Format.table,
    state_dir: StateDirOption = None,
) -> None:
    """Output VAT for the tax return: the invoices and notes issued in the period, per
    month of issue and rate (9% basic telecom, 6% value-added): documents, gross, VAT, net.

    Example: cdrflow report tax --from 2026-04-01 --to 2026-06-30 --format csv
    """
    start, end = _day(from_, "--from"), _day(to, "--to")
    _print_report(_query(state_dir, lambda client: reports.tax(client, start, end)), format_)


@report_app.command("transfers")
def transfers(
    from_: Annotated[
        str | None, typer.Option("--from", help="First local day of the transfers' instants, YYYY-MM-DD.")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last local day, YYYY-MM-DD (included).")] = None,
    account: AccountFilter = None,
    format_: FormatOption = Format.table,
    state_dir: StateDirOption = None,
) -> None:
    """Numbers moved between accounts (cdrflow number transfer): number, from, to, the
    instant from which its calls bill the new account, and whether it is done.

    Example: cdrflow report transfers --from 2026-03-01 --to 2026-03-31
    """
    start = None if from_ is None else _day(from_, "--from")
    end = None if to is None else _day(to, "--to")
    found = _query(state_dir, lambda client: reports.transfers(client, start, end, account))
    _print_report(found, format_)


@report_app.command("html")
def html(
    month: MonthOption,
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")],
    state_dir: StateDirOption = None,
) -> None:
    """A self-contained HTML page of the month's charts (opens offline): daily revenue by
    class, revenue by segment, top accounts, missed calls by hour, call origin by
    province, rejects by reason; and a VAT panel (the month's invoices and notes per rate).

    Example: cdrflow report html --month 2026-03 --out march.html
    """
    from streams.finance.report_html import write_report

    from streams.cdr_files import CdrFileError, check_outputs

    started = time.monotonic()
    if not out.parent.is_dir():
        raise fail(f"--out {out}: the folder {out.parent} does not exist", ExitCode.BAD_INPUT)
    try:
        check_outputs([out])
    except CdrFileError as error:
        raise fail(f"--out {error}", ExitCode.BAD_INPUT) from None
    with console.status(f"building the report of {month}"):
        _query(state_dir, lambda client: write_report(client, month, out))
    console.print(f"[green]wrote[/] {out} ({out.stat().st_size:,} bytes, {time.monotonic() - started:.1f} s)")


def retention(
    keep_months: Annotated[
        int, typer.Option("--keep-months", help="Months of call records to keep before the current one (>= 24).")
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be dropped.")] = False,
    today: Annotated[
        str | None, typer.Option("--today", help="Take this day (YYYY-MM-DD) as today.", hidden=True)
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print what was dropped as JSON.")] = False,
    state_dir: StateDirOption = None,
) -> None:
    """Drop monthly partitions of call records older than the current month minus N
    months (rated calls, their finance views, alerts); refuses N < 24 (medical customers
    keep 2 years). Per-account call totals of what is dropped are kept, so statements
    stay exact. Ledger events are never dropped. Also merges each closed month of the
    finance views into one part (faster exact reports).

    Example: cdrflow retention --keep-months 24 --dry-run
    """
    from streams.finance.retention import MIN_KEEP_MONTHS, RetentionError, apply_retention

    if keep_months < MIN_KEEP_MONTHS:
        raise fail(f"--keep-months {keep_months}: call records are kept at least {MIN_KEEP_MONTHS} months "
            "(medical customers need 2 years)", ExitCode.BAD_INPUT)
    as_of = _day(today, "--today") if today else date.today()
    try:
        dropped = _query(state_dir, lambda client: apply_retention(client, keep_months, as_of=as_of, dry_run=dry_run))
    except RetentionError as error:
        raise fail(str(error), ExitCode.FAILED) from None
    if json_:
        console.print_json(
            json.dumps(
                {"dry_run": dry_run, "cutoff": dropped.cutoff, "dropped": dropped.partitions, "settled": dropped.settled}
            )
        )
        return
    verb = "would drop" if dry_run else "dropped"
    for part in dropped.settled:
        console.print(
            f"{'would merge' if dry_run else 'merged'} {part['table']} {part['partition']} "
            f"({part['parts']} parts) into one: reports read it without FINAL"
        )
    if not dropped.partitions:
        console.print(f"nothing older than {dropped.cutoff} to drop")
        return
    table = Table(title=f"{verb} partitions before {dropped.cutoff}", title_justify="left")
    for column in ("table", "partition", "rows"):
        table.add_column(column)
    for part in dropped.partitions:
        table.add_row(part["table"], part["partition"], f"{part['rows']:,}")
    console.print(table)


# ------------------------------------------------------------------------------ helpers


def _day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise fail(f"{option}: expected a day as YYYY-MM-DD, got {text!r}", ExitCode.BAD_INPUT) from None


def _query(state_dir: Path | None, run: Callable[[Client], T]) -> T:
    # The driver logs a refused connection with a traceback; the error below says it.
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL + 1)
    settings = settings_or_fail(state_dir=state_dir)
    client = Client(**settings.clickhouse_params(), connect_timeout=5, client_name="cdrflow-report")
    with _clickhouse_errors(settings):
        try:
            return run(client)
        except reports.ReportError as error:
            raise fail(str(error), ExitCode.BAD_INPUT) from None
        finally:
            client.disconnect()


@contextmanager
def _clickhouse_errors(settings: Settings) -> Iterator[None]:
    """ClickHouse's failures as one line for people (no traceback, no server stack)."""
    try:
        yield
    except clickhouse_errors.ServerException as error:
        reason = str(error).split("Stack trace:")[0].strip()
        if error.code in (clickhouse_errors.ErrorCodes.UNKNOWN_TABLE, clickhouse_errors.ErrorCodes.UNKNOWN_DATABASE):
            reason += f"\nthe schema is not applied to {settings.redacted_clickhouse_url()}: run cdrflow up"
        raise fail(reason, ExitCode.FAILED) from None
    except Exception as error:
        if is_retryable(error):
            raise fail(f"ClickHouse at {settings.redacted_clickhouse_url()} does not answer ({error}); "
                "is the stack up (cdrflow up)?", ExitCode.FAILED) from None
        if isinstance(error, OSError):
            raise fail(f"cannot write: {error}", ExitCode.FAILED) from None
        raise


def _print_report(found: reports.Report, format_: Format) -> None:
    _print(found.rows(), found.columns, format_, found.title)


def _print(rows: list[dict[str, Any]], columns: tuple[str, ...], format_: Format, title: str) -> None:
    if format_ is Format.json:
        console.print_json(json.dumps(rows))
    elif format_ is Format.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        # Plain output: no rich markup or wrapping in a file a script reads.
        console.file.write(buffer.getvalue())
    else:
        table = Table(title=title, title_justify="left")
        numeric = {"calls", "minutes", "amount", "credit", "missed", "hour", "documents", "gross", "tax", "net"}
        for column in columns:
            table.add_column(column, justify="right" if column in numeric else "left")
        for row in rows:
            table.add_row(*(str(row[column]) for column in columns))
        console.print(table)
        if not rows:
            errors.print("no rows")
