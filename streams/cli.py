"""The ``cdrflow`` command line: thin typer commands over the library, printed with rich."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

# polars allocates through jemalloc (configured by `_RJEM_MALLOC_CONF`). As built into the
# wheel it hands freed pages back to the kernel so soon that a rating run faults the same
# memory in again for every chunk: measured on 1M CDRs, 660k page faults and 1.6 s of
# system time; keeping freed pages for 5 s brings that to ~400k and ~1.0 s. jemalloc reads
# the variable when polars loads, so it is set before the first polars import; a value the
# user set wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:5000,muzzy_decay_ms:5000")
# numpy (the CSV parser's line offsets) starts OpenBLAS with a thread and buffers per core
# when it is imported: 40-50 ms of every start measured, for linear algebra that nothing
# here does. One thread makes the import that much shorter; a value the user set wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table  # noqa: E402

from schemas.money import format_money  # noqa: E402
from schemas.switch_formats import Feed  # noqa: E402
from streams.format_options import (  # noqa: E402
    FormatOption,
    ProfileOption,
    SwitchIdOption,
    SwitchTimezoneOption,
    make_feed,
)
from tariffs import TariffError, Tariffs, load_tariffs  # noqa: E402

# The offline commands live on ``_app``; ``app`` (module ``__getattr__`` below) is the whole
# command line, the pipeline's commands included.
_app = typer.Typer(
    name="cdrflow",
    help="Event-sourced billing and CDR rating for 400 numbers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
plans_app = typer.Typer(help="Inspect and validate tariff plans.", no_args_is_help=True)
_app.add_typer(plans_app, name="plans")

# Piped into a file or a log, tables keep their width instead of folding at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

PlansOption = Annotated[Path, typer.Option("--plans", help="Folder of plan .toml files.")]
AccountsOption = Annotated[Path, typer.Option("--accounts", help="The accounts .toml file.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON for scripts.")]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a message for a person (no traceback) and return the exit to raise."""
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def load_or_fail(plans: Path, accounts: Path) -> Tariffs:
    try:
        return load_tariffs(plans, accounts)
    except TariffError as exc:
        count = len(exc.problems)
        lines = "\n".join(f"  - {p}" for p in exc.problems)
        raise fail(f"{count} problem{'s' if count != 1 else ''} in the plan/account files:\n{lines}") from None


@plans_app.command("check")
def plans_check(plans: PlansOption, accounts: AccountsOption, json_: JsonOption = False) -> None:
    """Validate plan and account files and summarise the plans.

    Example: cdrflow plans check --plans tariffs/reference --accounts accounts.toml
    """
    tariffs = load_or_fail(plans, accounts)
    if json_:
        console.print_json(
            data={
                "ok": True,
                "plans": {pid: plan.model_dump(mode="json", by_alias=True) for pid, plan in tariffs.plans.items()},
                "accounts": len(tariffs.accounts),
                "numbers": sum(len(a.numbers) for a in tariffs.accounts),
            }
        )
        return
    for plan in tariffs.plans.values():
        users = sum(1 for a in tariffs.accounts if a.plan == plan.id)
        table = Table(title=f"{plan.id}: {plan.name} ({plan.timezone}, {users} accounts)", title_justify="left")
        for column in ("version", "rent", "package", "per-call min", "daily cap", "increment", "off-peak", "rates"):
            table.add_column(column)
        for version in plan.versions:
            offpeak = version.offpeak
            table.add_row(
                version.effective_from.isoformat(),
                format_money(version.monthly_rent),
                f"{version.included_minutes} min",
                _money_or_dash(version.per_call_minimum),
                _money_or_dash(version.daily_cap),
                f"{version.increment.first}/{version.increment.next} s",
                "-" if offpeak is None else f"{offpeak.discount_percent}%",
                "\n".join(
                    f"{rate.segment} {rate.call_class}: "
                    + ", ".join(
                        f"{format_money(t.per_minute)}/min" + (f" to {t.up_to_minutes} min" if t.up_to_minutes else "")
                        for t in rate.tiers
                    )
                    for rate in version.rates
                ),
            )
        console.print(table)
    console.print(
        f"[green]ok[/]: {len(tariffs.plans)} plans, {len(tariffs.accounts)} accounts, "
        f"{sum(len(a.numbers) for a in tariffs.accounts)} numbers"
    )


def feed_or_fail(kind: str, profile: Path | None, switch_timezone: str | None, switch_id: str | None) -> Feed:
    """The feed of the format options, or a clean exit naming the option or profile key."""
    try:
        return make_feed(kind, profile, switch_timezone, switch_id)
    except ValueError as exc:  # ProfileError included
        raise fail(str(exc)) from None


def _money_or_dash(units: int | None) -> str:
    return "-" if units is None else format_money(units)


@_app.command()
def rate(
    cdrs: Annotated[Path, typer.Argument(help="CDR file: canonical CSV (spec 2.3), or what --format says.")],
    plans: PlansOption,
    accounts: AccountsOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for rated.csv, rejected.csv, alerts.csv.")],
    format_: FormatOption = "canonical",
    profile: ProfileOption = None,
    switch_timezone: SwitchTimezoneOption = None,
    switch_id: SwitchIdOption = None,
    horizon_months: Annotated[
        int,
        typer.Option(
            "--horizon-months",
            min=0,
            max=24,
            help=(
                "Months before an account's latest call month still rated; older calls are "
                "rejected `late` (docs/rules.md). Same default as the worker's CDRFLOW_HORIZON_MONTHS."
            ),
        ),
    ] = 1,
    json_: JsonOption = False,
) -> None:
    """Rate a CDR file offline into rated.csv, rejected.csv and alerts.csv.

    Example: cdrflow rate cdrs.csv --plans plans/ --accounts accounts.toml --out out/
    (a switch's own file: --format asterisk Master.csv, or --format mapped --profile fs.toml)
    """
    from rating import Catalog
    from streams.rate_files import InputError, rate_file

    feed = feed_or_fail(format_, profile, switch_timezone, switch_id)

    def load_catalog() -> Catalog:
        # Called by rate_file while it parses the first chunk of the CDR file.
        catalog = Catalog.from_tariffs(load_or_fail(plans, accounts), horizon_months=horizon_months)
        # What startup built (modules, the plans and accounts) lives until the end of the
        # run: frozen out of the cycle collector, which main() held off until now.
        gc.freeze()
        gc.enable()
        return catalog

    size = cdrs.stat().st_size if cdrs.is_file() else 0
    bar = _progress(disable=json_)
    task = bar.add_task(f"rating {cdrs.name}", total=size)

    def advance(done: int) -> None:
        bar.start()  # at the first call (once the plans are loaded); later calls do nothing
        bar.update(task, completed=done)

    try:
        summary = rate_file(cdrs, load_catalog, out, progress=advance, feed=feed)
    except InputError as exc:
        raise fail(str(exc)) from None
    finally:
        bar.stop()
    figures = {
        "cdrs": summary.cdrs,
        "rated": summary.rated,
        "unbilled": summary.unbilled,
        "rejected": dict(sorted(summary.rejected.items())),
        "amount": format_money(summary.amount),
        "alerts": dict(sorted(summary.alerts.items())),
        "seconds": round(summary.seconds, 3),
        "cdrs_per_second": round(summary.cdrs_per_second),
        "out": str(out),
        "format": feed.describe(),
    }
    if json_:
        console.print_json(data=figures)
        return
    table = outcome_table(
        f"{cdrs} ({feed.describe()}) -> {out}",
        lines=summary.cdrs,
        rated=summary.rated,
        unbilled=summary.unbilled,
        rejected=summary.rejected,
        amount=summary.amount,
        alerts=summary.alerts,
        speed=("CDRs per second", summary.seconds),
    )
    console.print(table)


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


@_app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder to write plans/, accounts.toml and cdrs.csv.")],
    cdrs: Annotated[int, typer.Option("--cdrs", min=0, help="Number of CDR lines.")] = 200_000,
    accounts: Annotated[int, typer.Option("--accounts", min=1, help="Number of accounts.")] = 2_000,
    month: Annotated[str, typer.Option("--month", help="Month of traffic, YYYY-MM.")] = "2026-03",
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same files.")] = 7,
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="canonical (cdrs.csv) or asterisk (Master.csv): the same calls in either format.",
            show_default=True,
        ),
    ] = "canonical",
    hot_share: Annotated[
        float,
        typer.Option(
            "--hot-share",
            min=0.0,
            max=0.9,
            help="Share of the calls that go to the first account (A00001): a large hotline. 0: the usual skew only.",
        ),
    ] = 0.0,
    json_: JsonOption = False,
) -> None:
    """Generate a month of realistic synthetic traffic in the layout of a vector set.

    Example: cdrflow generate --out data/ --cdrs 200000 --accounts 2000 --month 2026-03 --seed 7
    """
    from streams.generate import generate_dataset

    with _progress(disable=json_, bytes_=False) as bar:
        task = bar.add_task("generating CDRs", total=cdrs)
        try:
            made = generate_dataset(
                out, cdrs=cdrs, accounts=accounts, month=month, seed=seed,
                progress=lambda done: bar.update(task, completed=done), cdr_format=format_,
                hot_share=hot_share,
            )
        except ValueError as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            raise fail(f"{out}: cannot write ({exc.strerror})") from None
    figures = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(made).items()}
    if json_:
        console.print_json(data=figures)
    else:
        console.print(
            f"[green]wrote[/] {made.cdrs:,} CDRs ({made.malformed:,} malformed, {made.resent:,} resent, "
            f"{made.unknown_number:,} to unknown numbers) for {made.accounts:,} accounts with "
            f"{made.numbers:,} numbers: {made.plans_dir}/, {made.accounts_file}, {made.cdrs_file}"
        )


@_app.command()
def compare(
    expected: Annotated[Path, typer.Argument(help="Folder of the expected rated.csv, rejected.csv, alerts.csv.")],
    actual: Annotated[Path, typer.Argument(help="Folder of a run's files (cdrflow rate --out, cdrflow export --out).")],
    limit: Annotated[int, typer.Option("--limit", min=0, help="Differences shown per file.")] = 8,
    json_: JsonOption = False,
) -> None:
    """Compare a run's rated.csv, rejected.csv and alerts.csv with expected ones (spec 6):
    exit code 0 on an exact match, 1 with the differences printed, 2 when EXPECTED cannot
    be read. Rated rows match on (cdr_id, account_id) in any order; alerts keep their
    order within each account.

    Example: cdrflow compare tests/vectors/basic/expected out/
    """
    from streams.compare import CompareError, compare_outputs

    try:
        comparison = compare_outputs(expected, actual)
    except CompareError as exc:
        raise fail(str(exc)) from None
    if json_:
        console.print_json(data=comparison.to_json(limit))
    else:
        console.print(comparison.report(limit), markup=False, highlight=False, soft_wrap=True)
    if not comparison.ok:
        raise typer.Exit(1)


# The pipeline's commands import the Kafka/ClickHouse clients (~0.3 s of imports), which the
# offline commands never need: they are registered only when the whole command line is
# asked for (`cdrflow --help`, any pipeline command, or `from streams.cli import app`).
_OFFLINE_COMMANDS = frozenset({"rate", "plans", "generate", "compare"})
_pipeline_registered = False


def _full_app() -> typer.Typer:
    global _pipeline_registered
    if _pipeline_registered:
        return _app
    from streams.account_cli import account_app, close_month, number_app, sla_credit
    from streams.demo_cli import demo
    from streams.export_cli import export
    from streams.ingest_cli import ingest, load
    from streams.rebuild_cli import rebuild
    from streams.report_cli import report_app, retention
    from streams.rerate_cli import rerate
    from streams.route_cli import route
    from streams.stack_cli import down, status, up
    from streams.worker_cli import worker

    app = _app
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(load)
    app.command()(ingest)
    app.command()(route)
    app.command()(export)
    app.command()(worker)
    app.command()(demo)
    app.add_typer(account_app, name="account")
    app.add_typer(number_app, name="number")
    app.command("close-month")(close_month)
    app.command("sla-credit")(sla_credit)
    app.command()(rebuild)
    app.command()(rerate)
    app.add_typer(report_app, name="report")
    app.command()(retention)
    _pipeline_registered = True
    return app


def __getattr__(name: str) -> object:
    # PEP 562: `from streams.cli import app` gets every command.
    if name == "app":
        return _full_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _progress(*, disable: bool, bytes_: bool = True) -> Progress:
    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn(), TransferSpeedColumn()] if bytes_ else [TextColumn("{task.completed:,}/{task.total:,}")]
    return Progress(*columns, TimeRemainingColumn(), console=errors, disable=disable, transient=False)


def _keep_freed_chunk_buffers() -> None:
    """Have glibc keep the ~32 MB buffers of CDR chunks for the next chunk.

    By default glibc maps each allocation of 32 MB or more afresh and unmaps it when it is
    freed, so every chunk's bytes (read, completed to a line end, parsed) are page-faulted
    in anew: measured on 1M CDRs, 335k page faults, 0.15 s more than with them kept in the
    heap. Only for the `rate` process; nothing happens where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 256 << 20)
    mallopt(m_trim_threshold, 1 << 30)


def main() -> None:
    """Console-script entry point."""
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "rate":
        # Loading 20k accounts makes tens of thousands of pydantic objects, none of them
        # garbage: the cycle collector's passes over them cost 0.2-0.4 s of a 1M-CDR run
        # (measured). `rate` turns it back on once the catalogue is built.
        gc.disable()
        _keep_freed_chunk_buffers()
    (_app if command in _OFFLINE_COMMANDS else _full_app())()


if __name__ == "__main__":
    main()
