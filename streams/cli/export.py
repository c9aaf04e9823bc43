"""``cdrflow export``: a thin typer command over :func:`streams.finance.export.export`.

A plain typer-annotated function; :mod:`streams.cli.main` registers it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from clickhouse_driver import errors as clickhouse_errors
from rich.table import Table

from streams.cli._common import ExitCode, StateDirOption, console, fail, settings_or_fail
from streams.cdr_files import CdrFileError
from streams.clickhouse.insert import connect, is_retryable
from streams.finance import export as exporting
from streams.settings import Settings


def export(
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write rated.csv, rejected.csv and alerts.csv to.")
    ],
    json_: Annotated[bool, typer.Option("--json", help="Print the counts as JSON for scripts.")] = False,
    state_dir: StateDirOption = None,
) -> None:
    """Write what ClickHouse holds as rated.csv, rejected.csv (with the file of each
    line) and alerts.csv, in the format of `cdrflow rate`, so a streaming run can be
    compared with an offline one (cdrflow compare EXPECTED OUT).

    Example: cdrflow export --out /tmp/run
    """
    settings = settings_or_fail(state_dir=state_dir)
    started = time.monotonic()
    try:
        with console.status(f"exporting from {settings.redacted_clickhouse_url()}"):
            counts = exporting.export(connect(settings), out)
    except CdrFileError as error:  # an output that is a link: refused before anything was written
        raise fail(f"--out {error}", ExitCode.BAD_INPUT) from None
    except Exception as error:
        if isinstance(error, clickhouse_errors.ServerException):
            raise fail(_server_problem(settings, error), ExitCode.FAILED) from None
        if is_retryable(error):  # (before OSError: a refused connection is one too)
            raise fail(f"ClickHouse at {settings.redacted_clickhouse_url()} does not answer "
                f"({error}); is the stack up (cdrflow up)?", ExitCode.FAILED) from None
        if isinstance(error, OSError):
            raise fail(f"{out}: cannot write the export ({error.strerror or error})", ExitCode.FAILED) from None
        raise
    seconds = time.monotonic() - started
    if json_:
        console.print_json(json.dumps({"out": str(out), **counts, "seconds": round(seconds, 3)}))
        return
    table = Table(title=f"exported to {out} ({seconds:.1f} s)", title_justify="left")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, count in counts.items():
        table.add_row(f"{name}.csv", f"{count:,}")
    console.print(table)


def _server_problem(settings: Settings, error: clickhouse_errors.ServerException) -> str:
    reason = str(error).split("Stack trace:")[0].strip()
    if error.code in (clickhouse_errors.ErrorCodes.UNKNOWN_TABLE, clickhouse_errors.ErrorCodes.UNKNOWN_DATABASE):
        return f"{reason}\nthe schema is not applied to {settings.redacted_clickhouse_url()}: run cdrflow up"
    return reason
