"""``cdrflow account ...``, ``close-month``, ``sla-credit``, ``number grade``: the ledger's commands.

Thin: each checks the input and the account (``streams.ledger.commands``), publishes a ledger
command on the account's log, waits until the worker folded it, and prints the events it
produced. Repeating a command changes nothing (the events have deterministic ids and the
fold takes a repeat as done) and says so.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from schemas.invoices import document_json
from schemas.ledger import SERVICES, LedgerCommand
from schemas.money import format_money, parse_money
from streams.cli._common import ExitCode, JsonOption, StateDirOption, console, fail, parse_instant, settings_or_fail
from streams.cli._common import errors
from streams.kafka.client import BrokerError
from streams.ledger import commands as ops
from streams.ledger import invoices
from tariffs.grades import grade as grade_of
from tariffs.models import add_months

account_app = typer.Typer(help="Open accounts, take payments, services and lifecycle; show balances.", no_args_is_help=True)
number_app = typer.Typer(help="400 numbers: grades and selection fees, transfers between accounts.", no_args_is_help=True)

AtOption = Annotated[
    str | None,
    typer.Option("--at", help="When it takes effect: ISO 8601 with offset (default: now). For back-dated entries."),
]
WaitOption = Annotated[float, typer.Option("--wait-s", help="How long to wait for the worker to fold the command.")]


# ---------------------------------------------------------------------------- helpers


def _money(text: str, what: str, *, signed: bool = False) -> int:
    try:
        return parse_money(text, signed=signed)
    except ValueError as error:
        raise fail(f"{what} {text!r}: {error} (at most 4 decimals); nothing was written", ExitCode.BAD_INPUT) from None


def _command(**fields: Any) -> LedgerCommand:
    try:
        return LedgerCommand(**fields)
    except ValidationError as error:
        raise fail("; ".join(f"{'.'.join(map(str, e['loc'])) or 'command'}: {e['msg']}" for e in error.errors()), ExitCode.BAD_INPUT) from None


def _run(state_dir: Any, commands: list[LedgerCommand], wait_s: float) -> tuple[Any, list[ops.Published]]:
    settings = settings_or_fail(state_dir=state_dir)
    db = ops.client(settings)
    try:
        published = ops.publish(settings, commands)
        ops.wait_folded(db, published, timeout_s=wait_s)
    except (BrokerError, TimeoutError) as error:
        raise fail(str(error), ExitCode.FAILED) from None
    return db, published


def _context(state_dir: Any) -> tuple[Any, Any, Any]:
    settings = settings_or_fail(state_dir=state_dir)
    try:
        catalog = ops.catalog(settings)
    except BrokerError as error:
        raise fail(f"{error}; is the stack up (cdrflow up)?", ExitCode.FAILED) from None
    except Exception as error:  # a CatalogError: the topics disagree
        raise fail(str(error), ExitCode.FAILED) from None
    return settings, catalog, ops.client(settings)


def _report(db: Any, published: list[ops.Published], json_: bool, title: str,
            notes: list[dict[str, Any]] | None = None) -> None:
    """Print the events each command produced, and the balance after (``notes``: the
    credit notes they gave, in the JSON)."""
    results = []
    for item in published:
        account = item.command.account_id
        events = ops.events_of(db, account, offsets=[item.offset])
        row = ops.account_row(db, account) or {}
        results.append({"account_id": account, "events": events, "balance": row.get("balance"), "state": row.get("state"),
                        "credit": row.get("credit", 0), "credit_expires": row.get("credit_expires") or None})
    if json_:
        console.print_json(json.dumps([
            {
                "account_id": r["account_id"],
                "balance": format_money(r["balance"]) if r["balance"] is not None else None,
                "state": r["state"],
                "credit": format_money(r["credit"] or 0),
                "credit_expires": r["credit_expires"],
                "events": [_event_json(e) for e in r["events"]],
                **({"credit_notes": notes} if notes is not None else {}),
            }
            for r in results
        ]))
        return
    for r in results:
        table = Table(title=f"{title}: {r['account_id']}", title_justify="left")
        for column in ("event", "at", "amount", "balance", "detail"):
            table.add_column(column, justify="right" if column in ("amount", "balance") else "left")
        for e in r["events"]:
            table.add_row(e["kind"], e["at"].isoformat(), _signed(e["amount"] + e["opening_balance"]),
                          format_money(e["balance"]), e["detail"] or e["reference"])
        if not r["events"]:
            table.add_row("(nothing to do: already recorded)", "", "", "", "")
        console.print(table)
        if r["balance"] is not None:
            console.print(f"balance {format_money(r['balance'])} CNY, state {r['state']}")


def _event_json(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": e["event_id"],
        "kind": e["kind"],
        "at": e["at"].isoformat(),
        "amount": format_money(e["amount"]),
        "opening_balance": format_money(e["opening_balance"]),
        "balance": format_money(e["balance"]),
        "reference": e["reference"],
        "detail": e["detail"],
        "credit_change": format_money(e.get("credit_change", 0)),
        "credit": format_money(e.get("credit", 0)),
    }


def _signed(units: int) -> str:
    return ("+" if units > 0 else "") + format_money(units)


def _refuse(error: ops.LedgerRefused) -> typer.Exit:
    return fail(f"{error}; nothing was written", ExitCode.FAILED)


# ---------------------------------------------------------------------------- account


@account_app.command("open")
def account_open(
    id_: Annotated[str, typer.Option("--id", help="The new account's id.")],
    plan: Annotated[str, typer.Option("--plan", help="Its tariff plan (loaded with cdrflow load).")],
    numbers: Annotated[str, typer.Option("--numbers", help="Its 400 numbers, comma-separated.")],
    opening_balance: Annotated[str, typer.Option("--opening-balance", help="Money it starts with, e.g. 500.00.")] = "0",
    at: AtOption = None,
    json_: JsonOption = False,
    wait_s: WaitOption = ops.WAIT_S,
    state_dir: StateDirOption = None,
) -> None:
    """Open an account: charges the plan's opening fee and each number's selection fee by grade."""
    balance = _money(opening_balance, "--opening-balance", signed=True)
    wanted = [n.strip() for n in numbers.split(",") if n.strip()]
    instant = parse_instant(at)
    settings, catalog, db = _context(state_dir)
    try:
        if plan not in catalog.plans:
            raise ops.LedgerRefused(f"plan {plan!r} does not exist (plans: {', '.join(sorted(catalog.plans))})")
        grades = {}
        for number in wanted:
            try:
                grades[number] = grade_of(number)
            except ValueError as error:
                raise ops.LedgerRefused(f"--numbers: {error}") from None
        owners = catalog.account_of_number()
        taken = [f"{n} (account {owners[n]})" for n in wanted if owners.get(n) not in (None, id_)]
        if taken:
            raise ops.LedgerRefused(f"number(s) already assigned: {', '.join(taken)}")
        existing = next((a for a in catalog.accounts if a.id == id_), None)
        if existing is not None and (existing.plan != plan or sorted(existing.numbers) != sorted(wanted)):
            raise ops.LedgerRefused(f"account {id_!r} exists already, with plan {existing.plan} and numbers {existing.numbers}")
        fees = ops.grade_fees(settings)
        version = catalog.plans[plan].versions[0]
        for candidate in catalog.plans[plan].versions:
            if candidate.effective_from <= instant:
                version = candidate
        if version.valid_until is not None and instant >= version.valid_until:
            # issue 25: a published tariff is on sale until its valid_until (MIIT 2018 notice)
            raise ops.LedgerRefused(
                f"plan {plan} (version of {version.effective_from.isoformat()}) is not on sale since "
                f"{version.valid_until.isoformat()}"
            )
        # issue 23: a grade may need a dearer package; a package must be paid at opening.
        below = [why for why in (fees.refuses(n, version) for n in wanted) if why]
        if below:
            raise ops.LedgerRefused(f"plan {plan}: {'; '.join(below)}")
        charged = version.opening_fee + sum(fees.fee(g) for g in grades.values())
        if version.package is not None and balance - charged < version.package.price:
            raise ops.LedgerRefused(
                f"--opening-balance {format_money(balance)} less the fees {format_money(charged)} does not pay for "
                f"the package of plan {plan} ({format_money(version.package.price)})"
            )
    except ops.LedgerRefused as error:
        raise _refuse(error) from None
    command = _command(
        kind="open",
        account_id=id_,
        at=instant,
        plan=plan,
        numbers=wanted,
        opening_balance=balance,
        opening_fee=version.opening_fee,
        number_fees={n: (g, fees.fee(g)) for n, g in grades.items()},
    )
    if existing is None:
        ops.publish_account(
            settings,
            {"id": id_, "plan": plan, "numbers": wanted, "opening_balance": format_money(balance),
             "opened_at": instant.isoformat()},
        )
    db, published = _run(state_dir, [command], wait_s)
    _report(db, published, json_, "opened")


@account_app.command("topup")
def account_topup(
    account: Annotated[str, typer.Argument(help="The account paid for.")],
    amount: Annotated[str, typer.Argument(help="The amount received, e.g. 200.00 (at most 4 decimals).")],
    ref: Annotated[str, typer.Option("--ref", help="The payment reference (a payment is recorded once).")],
    at: AtOption = None,
    json_: JsonOption = False,
    wait_s: WaitOption = ops.WAIT_S,
    state_dir: StateDirOption = None,
) -> None:
    """Record a payment; the same reference again records nothing."""
    units = _money(amount, "AMOUNT")
    if units <= 0:
        raise fail(f"AMOUNT {amount!r}: a top-up must be positive; nothing was written", ExitCode.BAD_INPUT)
    _, catalog, db = _context(state_dir)
    instant = parse_instant(at)
    try:
        row = ops.require_account(db, catalog, account)
        known = ops.topup_amount(db, ref)
        if known is not None and known != (account, units):
            raise ops.LedgerRefused(
                f"payment reference {ref!r} was already used for {format_money(known[1])} on account {known[0]}"
            )
        version = _version(catalog, row["plan_id"], instant)
        if known is None and version is not None and version.min_topup is not None and units < version.min_topup:
            raise ops.LedgerRefused(
                f"a top-up of {format_money(units)} is below the minimum top-up of plan {row['plan_id']} "
                f"({format_money(version.min_topup)})"
            )
    except ops.LedgerRefused as error:
        raise _refuse(error) from None
    command = _command(kind="topup", account_id=account, at=instant, amount=units, ref=ref)
    db, published = _run(state_dir, [command], wait_s)
    _report(db, published, json_, "top-up")


@account_app.command("services")
def account_services(
    account: Annotated[str, typer.Argument(help="The account.")],
    enable: Annotated[str, typer.Option("--enable", help=f"Services to turn on ({','.join(SERVICES)}, or the plan's own).")] = "",
    disable: Annotated[str, typer.Option("--disable", help="Services to turn off.")] = "",
    at: AtOption = None,
    json_: JsonOption = False,
    wait_s: WaitOption = ops.WAIT_S,
    state_dir: StateDirOption = None,
) -> None:
    """Turn value-added services on or off (charged at month close: monthly, yearly or once, as the plan says)."""
    on = [s.strip() for s in enable.split(",") if s.strip()]
    off = [s.strip() for s in disable.split(",") if s.strip()]
    if not on and not off:
        raise fail("give --enable and/or --disable", ExitCode.BAD_INPUT)
    if set(on) & set(off):
        raise fail(f"{', '.join(sorted(set(on) & set(off)))}: both enabled and disabled", ExitCode.BAD_INPUT)
    _lifecycle(state_dir, account, "services", at, json_, wait_s, enable=on, disable=off)


@account_app.command("keep")
def account_keep(account: Annotated[str, typer.Argument()], at: AtOption = None, json_: JsonOption = False,
                 wait_s: WaitOption = ops.WAIT_S, state_dir: StateDirOption = None) -> None:
    """报停保号: keep the numbers without service (no rent, a keep-number fee a month)."""
    _lifecycle(state_dir, account, "keep", at, json_, wait_s)


@account_app.command("resume")
def account_resume(account: Annotated[str, typer.Argument()], at: AtOption = None, json_: JsonOption = False,
                   wait_s: WaitOption = ops.WAIT_S, state_dir: StateDirOption = None) -> None:
    """End a keep-number period: the account is active again."""
    _lifecycle(state_dir, account, "resume", at, json_, wait_s)


@account_app.command("cancel")
def account_cancel(account: Annotated[str, typer.Argument()], at: AtOption = None, json_: JsonOption = False,
                   wait_s: WaitOption = ops.WAIT_S, state_dir: StateDirOption = None) -> None:
    """Request cancellation: 30 days' notice, then 90 days frozen, then closed (refund at the notice's end)."""
    _lifecycle(state_dir, account, "cancel", at, json_, wait_s)


@account_app.command("renew")
def account_renew(account: Annotated[str, typer.Argument()], at: AtOption = None, json_: JsonOption = False,
                  wait_s: WaitOption = ops.WAIT_S, state_dir: StateDirOption = None) -> None:
    """Renew the account's term package: the renewal price leaves the balance, the package's
    credit is added, the term restarts today or extends from its end (as the plan says)."""
    _lifecycle(state_dir, account, "renew", at, json_, wait_s)


_ALLOWED = {
    "keep": ({"active"}, "only an active account can be kept"),
    "resume": ({"kept"}, "only a kept account can resume"),
    "cancel": ({"active", "suspended", "kept", "cancelling"}, "a frozen or closed account cannot be cancelled"),
    "services": ({"active", "suspended", "kept", "cancelling"}, "a frozen or closed account has no services"),
    "renew": ({"active"}, "only an active account can renew its package"),
}


def _lifecycle(state_dir: Any, account: str, kind: str, at: str | None, json_: bool, wait_s: float, **fields: Any) -> None:
    _, catalog, db = _context(state_dir)
    instant = parse_instant(at)
    try:
        row = ops.require_account(db, catalog, account)
        allowed, why = _ALLOWED[kind]
        if row["state"] not in allowed:
            raise ops.LedgerRefused(f"account {account} is {row['state']}: {why}")
        _check_plan_rules(db, catalog, account, row, kind, instant, fields)
    except ops.LedgerRefused as error:
        raise _refuse(error) from None
    command = _command(kind=kind, account_id=account, at=instant, **fields)
    db, published = _run(state_dir, [command], wait_s)
    _report(db, published, json_, kind)


def _version(catalog: Any, plan_id: str, instant: Any) -> Any:
    plan = catalog.plans.get(plan_id)
    return plan.version_at(instant) if plan is not None else None


def _check_plan_rules(db: Any, catalog: Any, account: str, row: dict[str, Any], kind: str, instant: Any,
                      fields: dict[str, Any]) -> None:
    """What the plan says about a command (issue 23), checked before anything is written;
    the worker's fold checks the same again."""
    plan_id = row["plan_id"]
    if kind == "services":
        version = _version(catalog, plan_id, instant)
        known = version.services if version is not None else {}
        unknown = sorted(name for name in fields.get("enable", []) if name not in known)
        if unknown:
            raise ops.LedgerRefused(f"plan {plan_id} has no service {', '.join(unknown)} (it has {', '.join(known)})")
    elif kind == "renew":
        version = _version(catalog, plan_id, instant)
        if version is None or version.package is None:
            raise ops.LedgerRefused(f"plan {plan_id} has no package at {instant.isoformat()}: nothing to renew")
        price = version.package.renews_for
        if row["balance"] < price:
            raise ops.LedgerRefused(
                f"the balance {format_money(row['balance'])} does not pay for the renewal ({format_money(price)}): "
                "top up first"
            )
    elif kind == "cancel" and row["state"] != "cancelling":
        opened = ops.opened_at(db, account)
        plan = catalog.plans.get(plan_id)
        contract = plan.version_at(opened) if plan is not None and opened is not None else None
        if contract is not None and contract.min_term_months and contract.early_termination == "refuse":
            ends = add_months(opened.astimezone(plan.zone), contract.min_term_months)
            if instant < ends:
                raise ops.LedgerRefused(
                    f"account {account} cannot be cancelled before the end of its minimum term of "
                    f"{contract.min_term_months} month(s) ({ends.isoformat()})"
                )


@account_app.command("show")
def account_show(account: Annotated[str, typer.Argument()], json_: JsonOption = False,
                 state_dir: StateDirOption = None) -> None:
    """State, balance, this month's usage and allowance left, services, recent events and alerts."""
    _, catalog, db = _context(state_dir)
    try:
        view = ops.account_view(db, catalog, account)
    except ops.LedgerRefused as error:
        raise fail(str(error), ExitCode.FAILED) from None
    if json_:
        console.print_json(json.dumps({
            **view,
            "balance": format_money(view["balance"]),
            "credit": format_money(view["credit"]),
            "month_calls_amount": format_money(view["month_calls_amount"]),
            "recent_events": [_event_json(e) for e in view["recent_events"]],
            "alerts": [{**a, "balance": format_money(a["balance"])} for a in view["alerts"]],
        }, default=str))
        return
    table = Table(title=f"account {account}", title_justify="left", show_header=False)
    table.add_row("state", view["state"])
    table.add_row("plan", view["plan_id"])
    table.add_row("balance", f"{format_money(view['balance'])} CNY")
    if view["credit_expires"]:
        table.add_row("package credit", f"{format_money(view['credit'])} CNY until {view['credit_expires']}")
    table.add_row(f"calls in {view['month']}", f"{view['month_calls']:,} calls, {format_money(view['month_calls_amount'])} CNY")
    table.add_row("allowance left", f"{view['allowance_left_s'] // 60:,} min {view['allowance_left_s'] % 60} s")
    table.add_row("services", ", ".join(view["services"]) or "none")
    if view["next_step"]:
        table.add_row("next step", f"{_NEXT_STEP.get(view['next_step'], view['next_step'])} at {view['next_step_at']}")
    console.print(table)
    events = Table(title="recent events", title_justify="left")
    for column in ("event", "at", "amount", "balance"):
        events.add_column(column)
    for e in view["recent_events"]:
        events.add_row(e["kind"], e["at"].isoformat(), _signed(e["amount"] + e["opening_balance"]), format_money(e["balance"]))
    console.print(events)
    alerts = Table(title="recent alerts", title_justify="left")
    for column in ("alert", "day", "balance", "call or event"):
        alerts.add_column(column)
    for a in view["alerts"]:
        alerts.add_row(a["kind"], str(a["local_day"]), format_money(a["balance"]), a["cdr_id"])
    console.print(alerts)


#: What each lifecycle deadline does, for people (issue 25).
_NEXT_STEP = {
    "frozen": "frozen (numbers blocked, no calls)",
    "released": "numbers released and the account closed",
    "closed": "closed, numbers released",
}


@account_app.command("history")
def account_history(account: Annotated[str, typer.Argument()], json_: JsonOption = False,
                    state_dir: StateDirOption = None) -> None:
    """Every event of the account (calls included) in log order, with the running balance."""
    _, catalog, db = _context(state_dir)
    try:
        ops.require_account(db, catalog, account)
    except ops.LedgerRefused as error:
        raise fail(str(error), ExitCode.FAILED) from None
    rows = ops.history(db, account)
    if json_:
        console.print_json(json.dumps([
            {**r, "at": r["at"].isoformat(), "amount": format_money(r["amount"]), "balance": format_money(r["balance"]),
             "credit": format_money(r["credit"])}
            for r in rows
        ]))
        return
    table = Table(title=f"history of {account}", title_justify="left")
    for column in ("event", "at", "amount", "balance", "reference"):
        table.add_column(column, justify="right" if column in ("amount", "balance") else "left")
    for r in rows:
        table.add_row(r["kind"], r["at"].isoformat(), _signed(r["amount"]), format_money(r["balance"]), r["reference"])
    console.print(table)


# ---------------------------------------------------------------------------- month close, SLA, numbers


def close_month(
    month: Annotated[str, typer.Argument(help="The month to close, YYYY-MM (it must have ended).")],
    at: AtOption = None,
    json_: JsonOption = False,
    wait_s: WaitOption = ops.WAIT_S,
    state_dir: StateDirOption = None,
) -> None:
    """Charge the month's rent, services, minimum-spend true-up and keep-number fees (once)."""
    instant = parse_instant(at)
    probe = _command(kind="close_month", account_id="-", at=instant, month=month)
    _, catalog, db = _context(state_dir)
    try:
        ops.month_has_ended(probe.month, catalog, instant)
    except ops.LedgerRefused as error:
        raise _refuse(error) from None
    accounts = ops.open_accounts(db, probe.month)
    if not accounts:
        raise fail("no account has been folded by a worker yet: nothing to close", ExitCode.FAILED)
    commands = [_command(kind="close_month", account_id=a, at=instant, month=month) for a in accounts]
    db, published = _run(state_dir, commands, wait_s)
    if json_:
        _report(db, published, True, f"closed {month}")
        return
    table = Table(title=f"month close {month}", title_justify="left")
    for column in ("account", "rent", "services", "minimum spend", "keep-number fee", "balance"):
        table.add_column(column, justify="left" if column == "account" else "right")
    totals = {"RentCharged": 0, "ServiceFeeCharged": 0, "MinimumSpendTrueUp": 0, "KeepNumberFeeCharged": 0}
    for item in published:
        events = ops.events_of(db, item.command.account_id, offsets=[item.offset])
        # a true-up drawn on package credit counts too (issue 23)
        sums = {k: sum(-(e["amount"] + e["credit_change"]) for e in events if e["kind"] == k) for k in totals}
        for k in totals:
            totals[k] += sums[k]
        row = ops.account_row(db, item.command.account_id) or {"balance": 0}
        table.add_row(item.command.account_id, *(format_money(sums[k]) for k in totals), format_money(row["balance"]))
    table.add_row("[bold]total", *(f"[bold]{format_money(v)}" for v in totals.values()), "")
    console.print(table)
    console.print(f"{len(published)} account(s); a month already closed charges nothing again.")


def sla_credit(
    account: Annotated[str, typer.Argument(help="The account whose service failed.")],
    start: Annotated[str, typer.Option("--start", help="Fault start, ISO 8601 with offset.")],
    end: Annotated[str, typer.Option("--end", help="Fault end, ISO 8601 with offset.")],
    at: AtOption = None,
    json_: JsonOption = False,
    wait_s: WaitOption = ops.WAIT_S,
    state_dir: StateDirOption = None,
) -> None:
    """Credit a day's rent for each local day a fault touched longer than the plan allows."""
    began, ended = parse_instant(start, "--start"), parse_instant(end, "--end")
    if ended <= began:
        raise fail("--end must be after --start; nothing was written", ExitCode.BAD_INPUT)
    _, catalog, db = _context(state_dir)
    try:
        ops.require_account(db, catalog, account)
    except ops.LedgerRefused as error:
        raise _refuse(error) from None
    command = _command(kind="sla_credit", account_id=account, at=parse_instant(at) if at else ended, start=began, end=ended)
    db, published = _run(state_dir, [command], wait_s)
    # issue 24: a credit of a month already invoiced is a credit note of its own
    # (issued now, or at --at: the command's own instant is the fault's end)
    notes, why_not = invoices.notes_after(settings_or_fail(state_dir=state_dir), [account], parse_instant(at),
                                          wait_s=wait_s)
    _report(db, published, json_, "SLA credit", notes=[document_json(note) for note in notes])
    if why_not:
        errors.print(f"[yellow]warning:[/] the SLA credit is recorded; {why_not}", highlight=False)
    if not json_:
        for note in notes:
            console.print(invoices.note_words(note))


@number_app.command("grade")
def number_grade(
    number: Annotated[str, typer.Argument(help="A 400 number, e.g. 4008123456.")],
    json_: JsonOption = False,
    state_dir: StateDirOption = None,
) -> None:
    """The number's grade (S, A, B, C) and selection fee (number_grades.toml if loaded)."""
    try:
        grade = grade_of(number)
    except ValueError as error:
        raise fail(str(error), ExitCode.BAD_INPUT) from None
    try:
        fees = ops.grade_fees(settings_or_fail(state_dir=state_dir))
    except BrokerError:
        from tariffs.grades import GradeFees

        fees = GradeFees()  # no stack: the default fees
    fee = fees.fee(grade)
    if json_:
        console.print_json(json.dumps({"number": number, "grade": grade, "fee": format_money(fee)}))
        return
    console.print(f"{number}: grade {grade}, selection fee {format_money(fee)} CNY")


@number_app.command("transfer")
def number_transfer(
    number: Annotated[str, typer.Argument(help="The 400 number to move, e.g. 4008123456.")],
    to: Annotated[str, typer.Option("--to", help="The account that takes it.")],
    at: AtOption = None,
    json_: JsonOption = False,
    wait_s: WaitOption = ops.WAIT_S,
    state_dir: StateDirOption = None,
) -> None:
    """过户: move a number to another account. Refused while its account owes (a negative
    balance, or a month not closed); calls charged before --at stay with the old account,
    calls from --at on bill the new one (late ones too). Running it again finishes a run
    cut short and records nothing twice.

    Example: cdrflow number transfer 4008123456 --to ACME2 --at 2026-04-01T00:00:00+08:00
    """
    from streams.catalog.publish import move_number
    from tariffs.models import Transfer

    try:
        grade_of(number)
    except ValueError as error:
        raise fail(f"NUMBER: {error}", ExitCode.BAD_INPUT) from None
    instant = parse_instant(at)
    settings, catalog, db = _context(state_dir)
    try:
        plan = ops.transfer_plan(db, catalog, number, to, instant)
    except ops.LedgerRefused as error:
        raise _refuse(error) from None
    steps = [("transfer_out", plan.old, to, plan.out_recorded), ("transfer_in", to, plan.old, plan.in_recorded)]
    published = []
    # The old account's log decides (it refuses while the account owes); the new one's
    # follows; the catalogue last, so that the feeds route later calls to the new account
    # (calls routed before it are forwarded by the old account's worker).
    for kind, account, counterpart, recorded in steps:
        command = _command(kind=kind, account_id=account, at=instant, number=number, counterpart=counterpart)
        if recorded:
            continue
        db, done = _run(state_dir, [command], wait_s)
        try:
            why = ops.refusal_of(db, settings, done[0], ops.transfer_event_id(account, number, instant), timeout_s=wait_s)
        except TimeoutError as error:
            raise fail(str(error), ExitCode.FAILED) from None
        if why is not None:
            written = "" if kind == "transfer_out" else f" (account {plan.old} gave it away: run the command again)"
            raise fail(f"{why}{written}", ExitCode.FAILED)
        published.extend(done)
    try:
        move_number(settings, Transfer.model_validate(
            {"number": number, "from": plan.old, "to": to, "at": instant.isoformat()}), topic_prefix=settings.topic_prefix)
    except BrokerError as error:
        raise fail(f"{error}: the number is transferred on both logs; run the command again to update the catalogue",
                   ExitCode.FAILED) from None
    if json_ or published:
        _report(db, published, json_, f"number {number} transferred")
    if not json_:
        console.print(f"number {number}: account {plan.old} until {instant.isoformat()}, account {to} from then on"
                      + ("" if published else " (already recorded)"))
