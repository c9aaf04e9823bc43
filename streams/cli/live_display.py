"""The output of the live feeds' commands: ``cdrflow ingest --tail`` and ``cdrflow route``.

Both run until Ctrl-C or SIGTERM (then they finish the pass under way, record their
positions and exit 0). With ``--json`` every event is one JSON object on one line of
stdout (for scripts and log collectors); otherwise a live table shows each feed's line,
counts and lag, and the events that matter (a new file, a rotation, a truncation, lines
that could not be read) are printed above it.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streams.feeds.live import Tally

console = Console(width=None if sys.stdout.isatty() else 160)


def tally_figures(tally: Tally | None) -> dict[str, Any]:
    """A tally as JSON figures.

    Examples
    --------
    >>> tally_figures(Tally(lines=3, accepted=2, skipped=1))
    {'lines': 3, 'accepted': 2, 'skipped': 1, 'rejected': {}}
    """
    if tally is None:
        return {}
    return {
        "lines": tally.lines,
        "accepted": tally.accepted,
        "skipped": tally.skipped,
        "rejected": dict(sorted(tally.rejected.items())),
    }


class LiveDisplay:
    """Prints events as JSON lines, or keeps a live table of feeds (rich)."""

    def __init__(self, title: str, columns: tuple[str, ...], *, json_: bool):
        self.json = json_
        self.title = title
        self.columns = columns
        self.rows: dict[str, tuple[str, ...]] = {}
        self.live: Live | None = None if json_ else Live(self._table(), console=console, refresh_per_second=2)

    def __enter__(self) -> LiveDisplay:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def event(self, figures: dict[str, Any], line: str | None = None) -> None:
        """One event: printed as JSON, or as ``line`` (when given) above the table.

        Both go through ``streams.settings.redact``: an error or a warning may quote what a
        library said, and no secret of the settings is printed (docs/operations.md)."""
        from streams.settings import redact

        if self.json:
            # One line per event whatever its length (rich would wrap it at the width).
            sys.stdout.write(redact(orjson.dumps(figures).decode()) + "\n")
            sys.stdout.flush()
        elif line is not None:
            console.print(redact(line), highlight=False)

    def row(self, key: str, values: tuple[str, ...]) -> None:
        """Set one feed's row of the live table."""
        self.rows[key] = values
        if self.live is not None:
            self.live.update(self._table())

    def _table(self) -> Table:
        table = Table(title=self.title, title_justify="left")
        for column in self.columns:
            table.add_column(column, justify="left" if column in ("file", "source", "partition") else "right")
        for values in self.rows.values():
            table.add_row(*values)
        return table


def run_until_stopped(
    target: Callable[[threading.Event], None], *, on_stopping: Callable[[], None] = lambda: None
) -> BaseException | None:
    """Run ``target(stop)`` in a thread until it returns; Ctrl-C and SIGTERM set ``stop``
    (a service manager stops with SIGTERM). Returns what the thread raised, if anything."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            target(stop)
        except BaseException as error:  # handed to the caller, which reports it
            failure.append(error)

    worker = threading.Thread(target=run, name="cdrflow-live-feed", daemon=True)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        on_stopping()
        worker.join()
    finally:
        signal.signal(signal.SIGTERM, previous_term)
    return failure[0] if failure else None
