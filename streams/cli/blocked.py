"""``cdrflow blocked``: the accounts a worker blocked, and ``retry`` / ``skip`` of one.

Thin: :mod:`streams.ledger.unblock` reads the blocked accounts the workers publish and puts
the request on the account's log; these commands print what became of it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from streams.cli._common import ExitCode, JsonOption, StateDirOption, console, errors, fail, settings_or_fail

blocked_app = typer.Typer(
    help="Accounts a worker blocked (their lines wait in cdr.raw): list them, try one again, or skip "
    "the message it is blocked at.",
    no_args_is_help=False,
    invoke_without_command=True,
)

WaitOption = Annotated[
    float, typer.Option("--wait-s", help="How long to wait for the worker to try the account again.")
]


@blocked_app.callback()
def blocked(ctx: typer.Context, json_: JsonOption = False, state_dir: StateDirOption = None) -> None:
    """List the blocked accounts: partition, the first message not applied, since when, why.

    Exits 3 while any account is blocked, 0 when none is.

    Example: cdrflow blocked --json
    """
    if ctx.invoked_subcommand is not None:
        return
    from streams.ledger.unblock import blocked_accounts

    settings = settings_or_fail(state_dir=state_dir)
    found = _read(lambda: blocked_accounts(settings), settings)
    if json_:
        console.print_json(json.dumps({"blocked": found}))
    elif not found:
        console.print("no account is blocked")
    else:
        table = Table(title="blocked accounts: their lines wait in cdr.raw (cdrflow blocked retry|skip ACCOUNT)",
                      title_justify="left")
        for column in ("account", "partition", "blocked at offset", "since", "worker", "error"):
            table.add_column(column)
        for account, note in found.items():
            table.add_row(account, str(note.get("partition", "")), str(note.get("offset", "")),
                          str(note.get("at", ""))[:19], str(note.get("worker", "")), str(note.get("error", "")))
        console.print(table)
    if found:
        raise typer.Exit(ExitCode.REFUSED)


@blocked_app.command("retry")
def retry(
    account: Annotated[str, typer.Argument(help="The blocked account.")],
    wait_s: WaitOption = 120.0,
    json_: JsonOption = False,
    state_dir: StateDirOption = None,
) -> None:
    """Try a blocked account again now (after fixing the cause: a limit, a plan, a bug).

    Puts a request on the account's log; the worker holding it rates the account's waiting
    messages at once. Exits 0 when it is free, 3 when it is blocked again (the new error is
    printed), 1 when no worker answered in time (the request stays on the log).

    Example: cdrflow blocked retry A001
    """
    _unblock(account, None, wait_s, json_, state_dir)


@blocked_app.command("skip")
def skip(
    account: Annotated[str, typer.Argument(help="The blocked account.")],
    reason: Annotated[str, typer.Option("--reason", help="Why the message is skipped (kept with its lines).")],
    wait_s: WaitOption = 120.0,
    json_: JsonOption = False,
    state_dir: StateDirOption = None,
) -> None:
    """Skip the message a blocked account is blocked at, and apply the rest of its log.

    The skipped message is kept: each of its lines becomes a rejection with reason
    `skipped` (cdr.rejected/rating.rejected, rejected_cdrs in ClickHouse) and the account's
    log gets an InputSkipped event with the reason. The skip is itself on the account's
    log, so a replay skips the same message. Exits as `retry` does.

    Example: cdrflow blocked skip A001 --reason "switch sw-bj1 sent a corrupt chunk, ticket OPS-42"
    """
    _unblock(account, reason, wait_s, json_, state_dir)


def _unblock(account: str, reason: str | None, wait_s: float, json_: bool, state_dir: Any) -> None:
    from streams.ledger.commands import LedgerRefused
    from streams.ledger.unblock import request, wait_outcome

    settings = settings_or_fail(state_dir=state_dir)
    try:
        published, before = _read(lambda: request(settings, account, skip_reason=reason), settings)
    except LedgerRefused as error:
        raise fail(str(error), ExitCode.BAD_INPUT) from None
    what = "skip" if reason is not None else "retry"
    with console.status(f"waiting for the worker to try {account} again"):
        outcome = _read(lambda: wait_outcome(settings, published, before, timeout_s=wait_s), settings)
    answer = {
        "account": account,
        "request": what,
        "skipped_offset": published.command.skip_offset,
        "published": {"partition": published.partition, "offset": published.offset},
        "outcome": outcome.state,
        "blocked": outcome.note,
    }
    if json_:
        console.print_json(json.dumps(answer))
    elif outcome.state == "unblocked":
        skipped = f" (message {before['offset']} skipped: its lines are rejections `skipped`)" if reason else ""
        console.print(f"[green]{account} is free again[/]{skipped}", highlight=False)
    elif outcome.state == "blocked":
        note = outcome.note or {}
        errors.print(f"[red]{account} is blocked again[/] at offset {note.get('offset')}: {note.get('error')}",
                     highlight=False)
    if outcome.state == "blocked":
        raise typer.Exit(ExitCode.REFUSED)
    if outcome.state == "waiting":
        raise fail(
            f"no worker tried {account} again within {wait_s:.0f} s: is a worker running (cdrflow worker)? The "
            f"request is on the account's log (partition {published.partition}, offset {published.offset}) and "
            "takes effect when a worker reaches it",
            ExitCode.FAILED,
        )


def _read(action: Any, settings: Any) -> Any:
    from streams.kafka.client import BrokerError

    try:
        return action()
    except (BrokerError, TimeoutError, OSError) as error:
        raise fail(f"the broker at {','.join(settings.kafka_servers())} did not answer: {error}", ExitCode.FAILED) from None
