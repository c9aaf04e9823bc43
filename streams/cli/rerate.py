"""``cdrflow rerate``: rate a period again with a corrected catalogue; show the diff, or apply it.

Thin: parse, call :mod:`streams.ledger.rerate`, print with rich. The rules are in
docs/rules.md ("Corrections").
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rating.rerate import Diff, Period
from schemas.columns import MONEY_COLUMNS
from schemas.invoices import InvoiceDocument, document_json
from schemas.money import format_money, money_expr
from streams.cli._common import ExitCode, StateDirOption, console, errors, fail, parse_instant, settings_or_fail
from streams.cdr_files import CdrFileError, check_outputs, replace_output
from streams.kafka.client import BrokerError
from streams.ledger import commands as ops
from streams.ledger import invoices
from streams.ledger import rerate as work
from tariffs import TariffError

#: Changed calls printed (all of them go to --out and --json).
SHOWN_CALLS = 20


def rerate(
    from_: Annotated[str, typer.Option("--from", help="First local day of the period, YYYY-MM-DD.")],
    to: Annotated[str, typer.Option("--to", help="Last local day of the period (included), YYYY-MM-DD.")],
    accounts: Annotated[
        str | None, typer.Option("--accounts", help="The accounts to correct, comma-separated.", show_default=False)
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Correct every account of the catalogue.")] = False,
    plans: Annotated[
        Path | None,
        typer.Option("--plans", help="Folder of corrected plan files (default: the plans loaded).", show_default=False),
    ] = None,
    accounts_file: Annotated[
        Path | None,
        typer.Option("--accounts-file", help="Corrected accounts file (default: the accounts loaded).", show_default=False),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; write nothing to Kafka or ClickHouse.")] = False,
    apply_: Annotated[bool, typer.Option("--apply", help="Publish the correction and wait until it is folded.")] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for calls.csv, totals.csv, balances.csv, alerts.csv and diff.json.",
                     show_default=False),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", help="When the correction is applied: ISO 8601 with offset (default: now). "
                     "Its month is the one the statements show it in.", show_default=False),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the diff (and what was applied) as JSON.")] = False,
    wait_s: Annotated[float, typer.Option("--wait-s", help="How long to wait for the worker.")] = work.LANDING_TIMEOUT_S,
    state_dir: StateDirOption = None,
) -> None:
    """Rate the months of a period again with a corrected catalogue and compare with what was
    billed: --dry-run shows the calls that change (old, new, delta, why), totals per account
    and class, balance deltas and alerts that appear or vanish; --apply publishes them as
    CallRerated corrections on each account's log, once, and waits until they are folded.

    Example: cdrflow rerate --accounts A001 --from 2026-03-01 --to 2026-03-31 --plans fixed/ --dry-run --out diff/
    """
    if dry_run == apply_:
        raise fail("give exactly one of --dry-run and --apply", ExitCode.BAD_INPUT)
    if (accounts is None) == (not all_):
        raise fail("give exactly one of --accounts ID,... and --all", ExitCode.BAD_INPUT)
    try:
        period = Period(_day(from_, "--from"), _day(to, "--to"))
    except ValueError as error:
        raise fail(f"--from/--to: {error}", ExitCode.BAD_INPUT) from None
    applied_at = parse_instant(at)
    chosen = None if all_ else [a.strip() for a in (accounts or "").split(",") if a.strip()]
    if chosen is not None and not chosen:
        raise fail("--accounts: no account id given", ExitCode.BAD_INPUT)
    settings = settings_or_fail(state_dir=state_dir)
    try:
        current = ops.catalog(settings)
    except BrokerError as error:
        raise fail(f"{error}; is the stack up (cdrflow up)?", ExitCode.FAILED) from None
    try:
        tariffs = work.corrected_tariffs(current, plans, accounts_file)
    except TariffError as error:
        lines = "\n".join(f"  - {problem}" for problem in error.problems)
        raise fail(f"the corrected catalogue cannot be used:\n{lines}", ExitCode.BAD_INPUT) from None

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
        TimeElapsedColumn(), console=errors, disable=json_, transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=max(total, 1))
            bar.update(tasks[what], completed=done, total=max(total, 1))

        try:
            prepared = work.prepare(
                settings, tariffs, chosen, period, horizon_months=settings.horizon_months,
                progress=progress, timeout_s=wait_s,
            )
        except work.RerateError as error:
            raise fail(str(error), ExitCode.FAILED) from None
    found = prepared.diff
    summary = _summary(prepared)
    if out is not None:
        _write(out, found, summary, [path for path in (plans, accounts_file) if path is not None])
    applied: dict[str, Any] | None = None
    notes: list[InvoiceDocument] = []
    if apply_:
        if found.problems:
            _show(prepared, summary, json_)
            raise fail("the correction cannot be applied (above); nothing was written", ExitCode.FAILED)
        if found.empty:
            summary["applied"] = applied = {"correction_id": None, "messages": 0, "accounts": {}}
        else:
            if work.catalogue_digest(current, prepared.accounts) != prepared.catalogue:
                errors.print(
                    "[yellow]warning:[/] the worker rates with the catalogue loaded, which differs from the "
                    "corrected one for these accounts: load the corrected files (cdrflow load), or later calls "
                    "will be rated as before",
                    highlight=False,
                )
            commands = work.correction_commands(prepared, applied_at)
            try:
                with console.status(f"publishing {len(commands)} correction message(s) and waiting for the worker"):
                    result = work.apply(settings, commands, timeout_s=wait_s)
            except (BrokerError, work.RerateError) as error:
                raise fail(str(error), ExitCode.FAILED) from None
            applied = {
                "correction_id": prepared.correction_id,
                "messages": len(result.published),
                "applied": len(result.applied),
                "already_recorded": len(result.published) - len(result.applied) - len(result.refused),
                "refused": result.refused,
                "accounts": {
                    account: {"balance": format_money(balance), "state": state}
                    for account, (balance, state) in sorted(result.balances.items())
                },
            }
            summary["applied"] = applied
            # issue 24: what the correction changed in invoiced months, as credit (debit) notes
            notes, why_not = invoices.notes_after(settings, prepared.accounts, applied_at, wait_s=wait_s)
            applied["credit_notes"] = [document_json(note) for note in notes]
            if why_not:
                errors.print(f"[yellow]warning:[/] the correction is applied; {why_not}", highlight=False)
    _show(prepared, summary, json_)
    if not json_:
        for note in notes:
            console.print(f"  {invoices.note_words(note)}")
    if applied and applied.get("refused"):
        raise typer.Exit(ExitCode.FAILED)


def _day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise fail(f"{option} {text!r}: expected a day, YYYY-MM-DD", ExitCode.BAD_INPUT) from None


# ---------------------------------------------------------------------------- output


#: Money columns of the diff's frames besides those of a rated row (old_/new_ of them included).
_DIFF_MONEY = frozenset({"delta", "corrected_balance"})


def _money_columns(frame: pl.DataFrame) -> list[str]:
    def is_money(name: str) -> bool:
        return name.removeprefix("old_").removeprefix("new_") in MONEY_COLUMNS | _DIFF_MONEY

    return [name for name in frame.columns if is_money(name) and frame.schema[name].is_integer()]


def _as_text(frame: pl.DataFrame) -> pl.DataFrame:
    """Money as exact 4-decimal strings, days as ISO dates, the rest as they are."""
    money = _money_columns(frame)
    return frame.with_columns(
        *[money_expr(name).cast(pl.String) for name in money],
        *[pl.col(name).cast(pl.String) for name, dtype in frame.schema.items() if dtype == pl.Date],
    )


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return _as_text(frame).to_dicts()


def _summary(prepared: work.Prepared) -> dict[str, Any]:
    found = prepared.diff
    return {
        "correction_id": None if found.empty else prepared.correction_id,
        "period": {"from": prepared.period.first.isoformat(), "to": prepared.period.last.isoformat()},
        "accounts": prepared.accounts,
        "lines_rated": prepared.lines,
        "calls": _rows(found.calls),
        "totals": _rows(found.totals),
        "balances": _rows(found.balances),
        "alerts": _rows(found.alerts),
        "problems": found.problems,
    }


def _write(out: Path, found: Diff, summary: dict[str, Any], inputs: list[Path]) -> None:
    frames = {"calls": found.calls, "totals": found.totals, "balances": found.balances, "alerts": found.alerts}
    try:
        check_outputs([*(out / f"{name}.csv" for name in frames), out / "diff.json"], inputs)
    except CdrFileError as error:
        raise fail(f"--out {error}", ExitCode.BAD_INPUT) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, frame in frames.items():
            replace_output(out / f"{name}.csv", lambda handle, frame=frame: _as_text(frame).write_csv(handle))
        replace_output(out / "diff.json", lambda handle: handle.write((json.dumps(summary, indent=1) + "\n").encode()))
    except OSError as error:
        raise fail(f"{out}: cannot write the diff ({error.strerror or error})", ExitCode.FAILED) from None


def _show(prepared: work.Prepared, summary: dict[str, Any], json_: bool) -> None:
    if json_:
        console.print_json(json.dumps(summary))
        return
    found = prepared.diff
    period = f"{prepared.period.first} to {prepared.period.last}"
    if found.empty and not found.problems:
        console.print(f"[green]nothing to correct[/]: {prepared.lines:,} lines rated again, every call of the "
                      f"months of {period} is billed as the catalogue rates it")
    if found.calls.height:
        table = Table(title=f"changed calls ({found.calls.height:,}; the first {min(SHOWN_CALLS, found.calls.height)})",
                      title_justify="left")
        for column in ("account", "call", "day", "in period", "old", "new", "delta", "what differs"):
            table.add_column(column, justify="right" if column in ("old", "new", "delta") else "left")
        for row in found.calls.head(SHOWN_CALLS).iter_rows(named=True):
            table.add_row(row["account_id"], row["cdr_id"], str(row["local_day"]), "yes" if row["in_period"] else "no",
                          format_money(row["old_amount"]), format_money(row["new_amount"]), _signed(row["delta"]),
                          _differs(row))
        console.print(table)
        totals = Table(title="per account and class", title_justify="left")
        for column in ("account", "class", "calls", "billed", "corrected", "delta"):
            totals.add_column(column, justify="left" if column in ("account", "class") else "right")
        for row in found.totals.iter_rows(named=True):
            totals.add_row(row["account_id"], row["class"], f"{row['calls']:,}", format_money(row["old_amount"]),
                           format_money(row["new_amount"]), _signed(row["delta"]))
        console.print(totals)
        balances = Table(title="balances", title_justify="left")
        for column in ("account", "balance now", "once corrected", "delta"):
            balances.add_column(column, justify="left" if column == "account" else "right")
        for row in found.balances.filter(pl.col("delta") != 0).iter_rows(named=True):
            balances.add_row(row["account_id"], format_money(row["balance"]), format_money(row["corrected_balance"]),
                             _signed(row["delta"]))
        console.print(balances)
    if found.alerts.height:
        alerts = Table(title="alerts", title_justify="left")
        for column in ("account", "kind", "call or event", "change", "old balance", "new balance"):
            alerts.add_column(column, justify="right" if "balance" in column else "left")
        for row in found.alerts.iter_rows(named=True):
            alerts.add_row(row["account_id"], row["kind"], row["cdr_id"],
                           {"appear": "appears", "vanish": "vanishes", "move": "balance changes"}[row["change"]],
                           _maybe_money(row["old_balance"]), _maybe_money(row["new_balance"]))
        console.print(alerts)
    for problem in found.problems:
        errors.print(f"[bold red]problem:[/] {problem}", highlight=False, soft_wrap=True)
    applied = summary.get("applied")
    if applied is not None:
        if not applied["messages"]:
            console.print("[green]nothing applied[/]: no call differs from what is billed")
            return
        console.print(
            f"[green]applied[/] correction {applied['correction_id']}: {applied['applied']} of {applied['messages']} "
            f"message(s) folded, {applied['already_recorded']} already recorded"
        )
        for account, state in applied["accounts"].items():
            console.print(f"  {account}: balance {state['balance']} CNY, state {state['state']}")
        for refusal in applied["refused"]:
            errors.print(f"[bold red]refused:[/] {refusal}", highlight=False, soft_wrap=True)

    elif not found.empty:
        console.print(f"dry run: nothing was written; `--apply` publishes correction {summary['correction_id']}")


def _differs(row: dict[str, Any]) -> str:
    if not row["changed"] or row["changed"].startswith("rated now"):
        return row["changed"]
    parts = []
    for column in row["changed"].split(","):
        old, new = row[f"old_{column}"], row[f"new_{column}"]
        if column in MONEY_COLUMNS and isinstance(old, int) and isinstance(new, int):
            old, new = format_money(old), format_money(new)
        parts.append(f"{column} {old}->{new}")
    return "; ".join(parts)


def _signed(units: int) -> str:
    return ("+" if units > 0 else "") + format_money(units)


def _maybe_money(units: int | None) -> str:
    return "" if units is None else format_money(units)
