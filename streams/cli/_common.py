"""What every command shares: the two consoles, one ``fail``, the exit codes, the settings and
the options several commands take.

Command modules import this one; it imports no command module and no Kafka or ClickHouse
client, so the offline commands (``rate``, ``compare``) start without them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from schemas.money import format_money
from schemas.switch_formats import Feed
from streams.cli.format_options import make_feed
from tariffs import TariffError, Tariffs, load_tariffs

if TYPE_CHECKING:
    from streams.settings import Settings


class ExitCode(IntEnum):
    """The exit codes of every command (docs/architecture.md: the command line)."""

    OK = 0
    #: a server did not answer or refused, a run found differences, a check failed
    FAILED = 1
    #: bad input (options, files, settings): nothing was written
    BAD_INPUT = 2
    #: refused on purpose: a file already ingested; an account is blocked (status)
    REFUSED = 3


# Piped into a file or a log, tables keep their width instead of folding at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

PlansOption = Annotated[Path, typer.Option("--plans", help="Folder of plan .toml files.")]
AccountsOption = Annotated[Path, typer.Option("--accounts", help="The accounts .toml file.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON for scripts.")]
StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Folder of the embedded servers' data, logs and pid files "
        "(default: $CDRFLOW_STATE_DIR, else ./.cdrflow).",
        show_default=False,
    ),
]


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Print a message for a person (no traceback) and return the exit to raise.

    The message goes through ``streams.settings.redact`` when the settings were read: a
    secret a library put in an error (a URL, a login) is printed as ``***``.
    """
    settings_module = sys.modules.get("streams.settings")
    if settings_module is not None:
        message = settings_module.redact(message)
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def settings_or_fail(**overrides: Any) -> Settings:
    """The settings (``CDRFLOW_*``, then ``overrides`` that are not None), or a clean exit
    naming each bad variable."""
    from streams.settings import Settings, install_log_redaction  # pydantic-settings: only where needed

    install_log_redaction()  # no secret of the settings reaches a log line
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        problems = "\n".join(
            f"  - CDRFLOW_{'_'.join(map(str, problem['loc'])).upper()}: {problem['msg']}"
            for problem in error.errors()
        )
        raise fail(f"bad settings:\n{problems}", ExitCode.BAD_INPUT) from None


def load_or_fail(plans: Path, accounts: Path) -> Tariffs:
    """The plans and accounts, or a clean exit listing every problem with its file and field."""
    try:
        return load_tariffs(plans, accounts)
    except TariffError as exc:
        count = len(exc.problems)
        lines = "\n".join(f"  - {p}" for p in exc.problems)
        raise fail(
            f"{count} problem{'s' if count != 1 else ''} in the plan/account files:\n{lines}", ExitCode.BAD_INPUT
        ) from None


AllowShortNoticeOption = Annotated[
    bool,
    typer.Option(
        "--allow-short-notice",
        help="Accept plan versions published less than the catalogue's notice_days (catalogue.toml) before they take effect.",
    ),
]


def notice_or_fail(tariffs: Tariffs, allow: bool) -> list[str]:
    """The plan versions published with less notice than the catalogue's ``notice_days``
    (tariffs.notice): refused with exit 2 unless ``allow``; else given back to print."""
    from tariffs.notice import short_notices

    problems = short_notices(tariffs)
    if problems and not allow:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise fail(
            f"{len(problems)} plan version(s) with short notice:\n{lines}\n"
            "publish them earlier, or pass --allow-short-notice",
            ExitCode.BAD_INPUT,
        )
    return problems


def feed_or_fail(
    kind: str, profile: Path | None, switch_timezone: str | None, switch_id: str | None, encoding: str | None = None
) -> Feed:
    """The feed of the format options, or a clean exit naming the option or profile key."""
    try:
        return make_feed(kind, profile, switch_timezone, switch_id, encoding)
    except ValueError as exc:  # ProfileError included
        raise fail(str(exc), ExitCode.BAD_INPUT) from None


def warn(lines: list[str], what: str) -> None:
    """Say loudly, on stderr, what a reader noticed about a whole file (feed warnings)."""
    for line in lines:
        errors.print(f"[bold yellow]warning[/] {what}: {line}", markup=True, highlight=False, soft_wrap=True)


def parse_instant(text: str | None, option: str = "--at") -> datetime:
    """An instant option (ISO 8601 with its offset), or now when it is not given; a bad
    one ends the command with exit 2, naming the option."""
    if text is None:
        return datetime.now(timezone.utc).replace(microsecond=0)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise fail(
            f"{option} {text!r}: not an ISO 8601 instant (e.g. 2026-03-01T10:00:00+08:00)", ExitCode.BAD_INPUT
        ) from None
    if value.tzinfo is None:
        raise fail(f"{option} {text!r}: give the offset (e.g. +08:00 or Z)", ExitCode.BAD_INPUT)
    return value


def progress_bar(*, disable: bool, bytes_: bool = True) -> Progress:
    """A progress bar on stderr: bytes and speed for files, ``done/total`` for counts."""
    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn(), TransferSpeedColumn()] if bytes_ else [TextColumn("{task.completed:,}/{task.total:,}")]
    return Progress(*columns, TimeRemainingColumn(), console=errors, disable=disable, transient=False)


def outcome_table(
    title: str,
    *,
    lines: int,
    rated: int,
    unbilled: int,
    rejected: Mapping[str, int],
    amount: int,
    alerts: Mapping[str, int],
    speed: tuple[str, float],
) -> Table:
    """What became of a run's CDR lines: the summary `rate` and `ingest --wait` print."""
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("CDR lines", f"{lines:,}")
    table.add_row("rated", f"{rated:,}")
    table.add_row("unbilled", f"{unbilled:,}")
    for reason, count in sorted(rejected.items()):
        table.add_row(f"rejected: {reason}", f"{count:,}")
    table.add_row("total amount (CNY)", format_money(amount))
    for kind, count in sorted(alerts.items()):
        table.add_row(f"alerts: {kind}", f"{count:,}")
    label, seconds = speed
    per_second = lines / seconds if seconds > 0 else 0.0
    table.add_row(label, f"{per_second:,.0f} ({seconds:.2f} s)")
    return table
