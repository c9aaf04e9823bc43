"""``cdrflow load`` and ``cdrflow ingest``: thin typer commands over :mod:`streams.catalog.publish`,
:mod:`streams.feeds.ingest` and :mod:`streams.feeds.landing`.

Plain typer-annotated functions; :mod:`streams.cli.main` registers them.

Exit codes: 0 done; 1 the broker or ClickHouse did not answer or refused, or ``--wait``
gave up; 2 bad input (a missing file, a file without the CDR header, invalid plan or
account files, no accounts loaded); 3 a file was refused as already ingested.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from schemas.money import format_money
from streams.cli._common import (
    AccountsOption,
    AllowShortNoticeOption,
    ExitCode,
    JsonOption,
    PlansOption,
    console,
    fail,
    feed_or_fail,
    load_or_fail,
    notice_or_fail,
    outcome_table,
    progress_bar,
    settings_or_fail,
    warn,
)
from streams.cli.format_options import (
    EncodingOption,
    FormatOption,
    ProfileOption,
    SwitchIdOption,
    SwitchTimezoneOption,
)

if TYPE_CHECKING:
    from streams.feeds.ingest import FollowEvent, IngestRun
    from streams.feeds.landing import Landed
    from streams.settings import Settings

# The Kafka and ClickHouse clients and the routing code are imported inside the commands,
# so `cdrflow rate` and friends do not pay for them (as streams/cli/stack.py does).


def load(
    plans: PlansOption, accounts: AccountsOption, allow_short_notice: AllowShortNoticeOption = False,
    json_: JsonOption = False,
) -> None:
    """Validate plans and accounts and publish what changed as events for the workers.

    Checks the files as `plans check` does (a version published with less than the
    catalogue's notice_days is refused unless --allow-short-notice), then publishes each
    plan (with all its versions) to the `plans` topic and each account to `accounts`, only
    those that differ from what the topics hold; a new plan version takes effect from its
    effective_from.

    Example: cdrflow load --plans tariffs/reference --accounts accounts.toml
    """
    from streams.catalog.publish import CatalogError, publish_tariffs
    from streams.kafka.client import BrokerError

    tariffs = load_or_fail(plans, accounts)
    notice_or_fail(tariffs, allow_short_notice)
    settings = settings_or_fail()
    try:
        with console.status("publishing plans and accounts", spinner="dots") if not json_ else _nothing():
            result = publish_tariffs(settings, tariffs, accounts)
    except BrokerError as error:
        raise fail(str(error), ExitCode.FAILED) from None
    except CatalogError as error:
        raise fail(str(error), ExitCode.BAD_INPUT) from None
    figures = {
        "ok": True,
        "plans": {"published": list(result.plans_published), "unchanged": result.plans_unchanged,
                  "only_on_topic": list(result.plans_only_on_topic)},
        "accounts": {"published": len(result.accounts_published), "unchanged": result.accounts_unchanged,
                     "only_on_topic": len(result.accounts_only_on_topic)},
        "kafka_bootstrap": ",".join(settings.kafka_servers()),
    }
    if json_:
        console.print_json(data=figures)
        return
    published = ", ".join(result.plans_published) or "none"
    console.print(
        f"[green]loaded[/] into {figures['kafka_bootstrap']}: plans published: {published} "
        f"({result.plans_unchanged} unchanged); accounts published: {len(result.accounts_published):,} "
        f"({result.accounts_unchanged:,} unchanged)",
        highlight=False,
    )
    if result.plans_only_on_topic or result.accounts_only_on_topic:
        console.print(
            f"note: {len(result.plans_only_on_topic)} plans and {len(result.accounts_only_on_topic):,} accounts on "
            "the topics are not in these files; they stay as they are (load never deletes)",
            highlight=False,
        )


def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="CDR CSV files, or folders (every *.csv in them, by name).", show_default=False)
    ],
    wait: Annotated[
        bool, typer.Option("--wait", help="Return once every line has landed in ClickHouse, and print the summary.")
    ] = False,
    follow_: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Watch the one folder given: ingest each *.csv once its size has not changed for 1 s "
            "(or write NAME.csv.part and rename it), move it to done/; refused files go to refused/. "
            "Ctrl-C or SIGTERM stops after the file being sent.",
        ),
    ] = False,
    tail: Annotated[
        bool,
        typer.Option(
            "--tail",
            help="Follow the files given while a switch writes them (like tail -F): send each whole line as it "
            "appears, through rotations and truncations, resuming exactly after a restart. Runs until Ctrl-C "
            "or SIGTERM.",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Send files already ingested again (their lines come out as duplicates).")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds --wait waits for the lines to land.")
    ] = 600.0,
    format_: FormatOption = "canonical",
    profile: ProfileOption = None,
    switch_timezone: SwitchTimezoneOption = None,
    switch_id: SwitchIdOption = None,
    encoding: EncodingOption = None,
    json_: JsonOption = False,
) -> None:
    """Send CDR files to the workers, each line to its account's partition in file order.

    Malformed and unknown-number lines are recorded as rejections with the file name and
    line. A file whose content was ingested before is refused (exit 3) unless --force.
    Exit 1: broker or ClickHouse unreachable, or --wait gave up; 2: bad input.

    Example: cdrflow ingest spool/cdrs-20260302.csv --wait
    (a switch's live file: cdrflow ingest --tail /var/log/asterisk/cdr-csv/Master.csv --format asterisk)
    """
    from streams.catalog.publish import CatalogError
    from streams.cdr_files import CdrFileError
    from streams.feeds.ingest import AlreadyIngested, NothingLoaded, ingest_paths
    from streams.kafka.client import BrokerError

    feed = feed_or_fail(format_, profile, switch_timezone, switch_id, encoding)
    settings = settings_or_fail()
    if tail:
        if follow_ or wait or force:
            raise fail("--tail follows files as they grow; it takes neither --follow, --wait nor --force", ExitCode.BAD_INPUT)
        _tail(settings, paths, feed=feed, json_=json_)
        return
    if follow_:
        if len(paths) != 1:
            raise fail("--follow watches one spool folder; give exactly one", ExitCode.BAD_INPUT)
        _follow(settings, paths[0], force=force, wait=wait, timeout=timeout, json_=json_, feed=feed)
        return
    started = time.perf_counter()
    try:
        with progress_bar(disable=json_) as bar:
            tasks: list[Any] = []

            def progress(done: int, total: int) -> None:
                # Added at the first bytes read, so a refusal prints no empty bar before it.
                if not tasks:
                    tasks.append(bar.add_task("ingesting", total=total))
                bar.update(tasks[0], completed=done)

            run = ingest_paths(settings, paths, force=force, progress=progress, feed=feed)
    except CdrFileError as error:
        raise fail(str(error), ExitCode.BAD_INPUT) from None
    except NothingLoaded as error:
        raise fail(str(error), ExitCode.BAD_INPUT) from None
    except AlreadyIngested as error:
        lines = "\n".join(f"  - {problem}" for problem in error.problems)
        raise fail(f"refused, nothing was sent: the same content was ingested before:\n{lines}\n"
            "Use --force to send it again (its lines then come out as duplicates).", ExitCode.REFUSED) from None
    except (BrokerError, CatalogError) as error:
        raise fail(str(error), ExitCode.FAILED) from None
    figures = _run_figures(run)
    for result in run.files:
        warn(result.warnings, str(result.path))
    landed = None
    if wait:
        landed = _wait(settings, run.ingest_ids, run.lines, timeout=timeout, json_=json_, started=started)
        figures["landed"] = _landed_figures(landed, time.perf_counter() - started)
    if json_:
        console.print_json(data=figures)
        return
    _print_run(run)
    if landed is not None:
        _print_landed(landed, run.lines, time.perf_counter() - started)


# ---------------------------------------------------------------------------- helpers


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


def _wait(settings: Settings, ingest_ids: list[str], lines: int, *, timeout: float, json_: bool, started: float) -> Landed:
    from streams.feeds.landing import LandingError, LandingTimeout, wait_until_landed

    try:
        with progress_bar(disable=json_, bytes_=False) as bar:
            task = bar.add_task("lines landed in ClickHouse", total=lines)
            return wait_until_landed(
                settings, ingest_ids, lines, timeout_s=timeout, progress=lambda done: bar.update(task, completed=done)
            )
    except LandingError as error:
        raise fail(str(error), ExitCode.FAILED) from None
    except LandingTimeout as error:
        raise fail(str(error), ExitCode.FAILED) from None


def _file_figures(result: Any) -> dict[str, Any]:
    return {
        "path": str(result.path),
        "sha256": result.sha256,
        "ingest_id": result.ingest_id,
        "forced": result.forced,
        "bytes": result.bytes,
        "lines": result.lines,
        "to_raw": result.accepted,
        "rejected": dict(sorted(result.rejected.items())),
        "raw_messages": result.raw_messages,
        "rejected_messages": result.rejected_messages,
        "seconds": round(result.seconds, 3),
        "warnings": result.warnings,
    }


def _run_figures(run: IngestRun) -> dict[str, Any]:
    return {
        "files": [_file_figures(result) for result in run.files],
        "lines": run.lines,
        "seconds": round(run.seconds, 3),
        "lines_per_second": round(run.lines / run.seconds) if run.seconds > 0 else 0,
    }


def _landed_figures(landed: Landed, seconds: float) -> dict[str, Any]:
    return {
        "rated": landed.rated,
        "unbilled": landed.unbilled,
        "rejected": dict(sorted(landed.rejected.items())),
        "amount": format_money(landed.amount),
        "alerts": dict(sorted(landed.alerts.items())),
        "seconds": round(seconds, 3),
        "lines_per_second": round(landed.lines / seconds) if seconds > 0 else 0,
    }


def _print_run(run: IngestRun) -> None:
    table = Table(title=f"ingested {len(run.files)} file{'s' if len(run.files) != 1 else ''}", title_justify="left")
    for column, justify in (
        ("file", "left"), ("lines", "right"), ("to cdr.raw", "right"), ("malformed", "right"),
        ("unknown number", "right"), ("messages", "right"), ("ingest_id", "left"),
    ):
        table.add_column(column, justify=justify)
    for result in run.files:
        table.add_row(
            str(result.path) + (" (forced)" if result.forced else ""),
            f"{result.lines:,}",
            f"{result.accepted:,}",
            f"{result.rejected.get('malformed', 0):,}",
            f"{result.rejected.get('unknown_number', 0):,}",
            f"{result.raw_messages + result.rejected_messages:,}",
            result.ingest_id,
        )
    console.print(table)
    rate = run.lines / run.seconds if run.seconds > 0 else 0.0
    console.print(f"{run.lines:,} lines sent in {run.seconds:.2f} s ({rate:,.0f} lines/s)", highlight=False)


def _print_landed(landed: Landed, lines: int, seconds: float) -> None:
    console.print(
        outcome_table(
            "landed in ClickHouse",
            lines=lines,
            rated=landed.rated,
            unbilled=landed.unbilled,
            rejected=landed.rejected,
            amount=landed.amount,
            alerts=landed.alerts,
            speed=("CDRs per second (end to end)", seconds),
        )
    )

def _follow(
    settings: Settings, folder: Path, *, force: bool, wait: bool, timeout: float, json_: bool, feed: Any = None
) -> None:
    """Run :func:`streams.feeds.ingest.follow` in a thread, so Ctrl-C lets the file being sent finish."""
    from streams.catalog.publish import CatalogError
    from streams.cdr_files import CdrFileError
    from streams.feeds.ingest import check_spool_folder, follow
    from streams.feeds.landing import LandingError, LandingTimeout, wait_until_landed
    from streams.kafka.client import BrokerError

    try:
        check_spool_folder(folder)
    except CdrFileError as error:
        raise fail(str(error), ExitCode.BAD_INPUT) from None
    stop = threading.Event()
    failure: list[BaseException] = []
    counts: Counter[str] = Counter()
    bar = progress_bar(disable=json_)
    tasks: dict[Path, Any] = {}

    def on_progress(path: Path, done: int, size: int) -> None:
        if path not in tasks:
            tasks[path] = bar.add_task(path.name, total=size)
        bar.update(tasks[path], completed=done)

    def on_event(event: FollowEvent) -> None:
        counts[event.kind] += 1
        figures: dict[str, Any] = {"event": event.kind, "path": str(event.path), "message": event.message}
        if event.moved_to is not None:
            figures["moved_to"] = str(event.moved_to)
        if event.result is not None:
            figures.update(_file_figures(event.result))
            if wait:
                started = time.monotonic()
                try:
                    landed = wait_until_landed(settings, [event.result.ingest_id], event.result.lines, timeout_s=timeout)
                    figures["landed"] = _landed_figures(landed, time.monotonic() - started)
                except (LandingError, LandingTimeout) as error:
                    figures["landed_error"] = str(error)
        if json_:
            console.print_json(data=figures)
        elif event.kind == "ingested" and event.result is not None:
            result = event.result
            bar.console.print(
                f"[green]ingested[/] {event.path.name}: {result.lines:,} lines ({result.accepted:,} to cdr.raw, "
                f"{sum(result.rejected.values()):,} rejected), ingest_id {result.ingest_id}, moved to {event.moved_to}",
                highlight=False,
            )
            if "landed" in figures:
                landed = figures["landed"]
                bar.console.print(
                    f"  landed: {landed['rated']:,} rated, {landed['unbilled']:,} unbilled, "
                    f"{sum(landed['rejected'].values()):,} rejected, amount {landed['amount']}",
                    highlight=False,
                )
            elif "landed_error" in figures:
                bar.console.print(f"  [yellow]not landed:[/] {figures['landed_error']}", highlight=False)
        elif event.kind == "refused":
            bar.console.print(f"[yellow]refused[/] {event.message}; moved to {event.moved_to}", highlight=False)
        else:
            bar.console.print(f"[red]error[/] {event.path.name}: {event.message} (will retry)", highlight=False)

    def run() -> None:
        try:
            follow(settings, folder, force=force, on_event=on_event, on_progress=on_progress, stop=stop, feed=feed)
        except BaseException as error:  # handed to the main thread, which reports it
            failure.append(error)

    worker = threading.Thread(target=run, name="cdrflow-follow", daemon=True)
    # A service manager stops with SIGTERM: treat it as Ctrl-C (finish the file being sent).
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with bar:
        if not json_:
            bar.console.print(f"following {folder} (Ctrl-C to stop)", highlight=False)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
        except KeyboardInterrupt:
            stop.set()
            if not json_:
                bar.console.print("stopping after the file being sent (Ctrl-C again to abandon it)", highlight=False)
            worker.join()
        finally:
            signal.signal(signal.SIGTERM, previous_term)
    if failure:
        error = failure[0]
        if isinstance(error, CdrFileError):
            raise fail(str(error), ExitCode.BAD_INPUT) from None
        if isinstance(error, (BrokerError, CatalogError)):
            raise fail(str(error), ExitCode.FAILED) from None
        raise error
    if not json_:
        console.print(
            f"stopped: {counts['ingested']} ingested, {counts['refused']} refused, {counts['error']} errors",
            highlight=False,
        )


def _tail(settings: Settings, paths: list[Path], *, feed: Any, json_: bool) -> None:
    """Run :class:`streams.feeds.tail.Tailer` until Ctrl-C or SIGTERM, showing its progress."""
    from streams.catalog.publish import CatalogError
    from streams.cdr_files import CdrFileError
    from streams.cli.live_display import LiveDisplay, run_until_stopped, tally_figures
    from streams.feeds.ingest import NothingLoaded
    from streams.feeds.tail import Tailer, TailEvent
    from streams.kafka.client import BrokerError

    display = LiveDisplay(
        f"following {len(paths)} file{'s' if len(paths) != 1 else ''} (Ctrl-C to stop)",
        ("file", "source", "next line", "lines", "to cdr.raw", "rejected", "behind (bytes)"),
        json_=json_,
    )

    def on_event(event: TailEvent) -> None:
        figures = {
            "event": event.kind,
            "path": str(event.path),
            "source": event.source,
            "next_line": event.next_line,
            **({"message": event.message} if event.message else {}),
            **tally_figures(event.tally),
            **({"behind_bytes": event.behind_bytes} if event.kind == "progress" else {}),
        }
        style = {"lost": "red", "error": "red", "truncated": "yellow", "rotated": "green", "warning": "bold yellow"}.get(
            event.kind, "cyan"
        )
        shown = None if event.kind == "progress" else f"[{style}]{event.kind}[/] {event.source or event.path}: {event.message}"
        display.event(figures, shown)
        if event.tally is not None or event.kind == "following":
            tally = event.tally
            display.row(
                str(event.path),
                (
                    event.path.name,
                    event.source,
                    f"{event.next_line:,}",
                    f"{tally.lines:,}" if tally else "-",
                    f"{tally.accepted:,}" if tally else "-",
                    f"{sum(tally.rejected.values()):,}" if tally else "-",
                    f"{event.behind_bytes:,}",
                ),
            )

    tailer = Tailer(settings, paths, feed, topic_prefix=settings.topic_prefix, on_event=on_event)
    with display:
        failure = run_until_stopped(tailer.run)
    if isinstance(failure, (CdrFileError, NothingLoaded)):
        raise fail(str(failure), ExitCode.BAD_INPUT) from None
    if isinstance(failure, (BrokerError, CatalogError)):
        raise fail(str(failure), ExitCode.FAILED) from None
    if failure is not None:
        raise failure
    display.event({"event": "stopped"}, "stopped: every position recorded")
