"""The commands that need no server: ``rate``, ``plans check``, ``generate``, ``compare``.

Plain typer-annotated functions; streams.cli.main registers them. They import the
offline library inside the command, so ``--help`` pays for none of it."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    parse_instant,
    progress_bar,
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
    from rating.bounds import TimeBounds

plans_app = typer.Typer(help="Inspect and validate tariff plans.", no_args_is_help=True)


@plans_app.command("check")
def plans_check(
    plans: PlansOption, accounts: AccountsOption, allow_short_notice: AllowShortNoticeOption = False,
    json_: JsonOption = False,
) -> None:
    """Validate plan and account files and summarise the plans. A plan version published
    less than the catalogue's notice_days (catalogue.toml, default 30) before it takes
    effect is refused unless --allow-short-notice.

    Example: cdrflow plans check --plans tariffs/reference --accounts accounts.toml
    """
    tariffs = load_or_fail(plans, accounts)
    short = notice_or_fail(tariffs, allow_short_notice)
    if json_:
        console.print_json(
            data={
                "ok": True,
                "plans": {pid: plan.model_dump(mode="json", by_alias=True) for pid, plan in tariffs.plans.items()},
                "accounts": len(tariffs.accounts),
                "numbers": sum(len(a.numbers) for a in tariffs.accounts),
                "transfers": len(tariffs.transfers),
                "notice_days": tariffs.rules.notice_days,
                "short_notice": short,
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
    for problem in short:
        console.print(f"[yellow]short notice allowed[/]: {problem}", highlight=False)
    console.print(
        f"[green]ok[/]: {len(tariffs.plans)} plans, {len(tariffs.accounts)} accounts, "
        f"{sum(len(a.numbers) for a in tariffs.accounts)} numbers"
    )


@plans_app.command("notices")
def plans_notices(
    plans: PlansOption,
    accounts: AccountsOption,
    days: Annotated[int, typer.Option("--days", min=0, max=3650, help="How far ahead to look, in days.")] = 30,
    at: Annotated[
        str | None, typer.Option("--at", help="From when: ISO 8601 with offset (default: now).")
    ] = None,
    json_: JsonOption = False,
) -> None:
    """List the plan changes that take effect within --days: the notices to send to the
    accounts on each plan, with what changes and how much notice was given.

    Example: cdrflow plans notices --plans tariffs/reference --accounts accounts.toml --days 30
    """
    from tariffs.notice import coming_changes

    tariffs = load_or_fail(plans, accounts)
    start = parse_instant(at)
    changes = coming_changes(tariffs, start, days)
    if json_:
        console.print_json(data={"from": start.isoformat(), "days": days, "changes": [c.to_json() for c in changes]})
        return
    table = Table(title=f"plan changes from {start.isoformat()} within {days} days", title_justify="left")
    for column in ("plan", "takes effect", "published", "notice", "changes", "accounts", "description"):
        table.add_column(column)
    for change in changes:
        table.add_row(
            f"{change.plan_id} {change.plan_name}".strip(),
            change.effective_from.isoformat(),
            "-" if change.published_at is None else change.published_at.isoformat(),
            "-" if change.notice_days is None else f"{change.notice_days} d",
            ", ".join(change.changed) or "(nothing priced)",
            f"{len(change.accounts):,}",
            change.description,
        )
    console.print(table)
    console.print(f"{len(changes)} change(s); {sum(len(c.accounts) for c in changes):,} notice(s) to send")


def _money_or_dash(units: int | None) -> str:
    return "-" if units is None else format_money(units)


def rate(
    cdrs: Annotated[Path, typer.Argument(help="CDR file: canonical CSV (spec 2.3), or what --format says.")],
    plans: PlansOption,
    accounts: AccountsOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for rated.csv, rejected.csv, alerts.csv.")],
    format_: FormatOption = "canonical",
    profile: ProfileOption = None,
    switch_timezone: SwitchTimezoneOption = None,
    switch_id: SwitchIdOption = None,
    encoding: EncodingOption = None,
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
    earliest_call: Annotated[
        str,
        typer.Option(
            "--earliest-call",
            help="Calls charged before this instant (ISO 8601) are rejected invalid_time: a switch clock gone "
            "wrong (CDRFLOW_EARLIEST_CALL for the worker).",
        ),
    ] = "2001-01-01T00:00:00Z",
    latest_call: Annotated[
        str,
        typer.Option("--latest-call", help="Calls charged from this instant on are rejected invalid_time."),
    ] = "2100-01-01T00:00:00Z",
    ahead_hours: Annotated[
        float,
        typer.Option(
            "--ahead-hours",
            min=0,
            help="Calls charged more than this many hours after the file was last written are rejected "
            "invalid_time (a switch clock ahead).",
        ),
    ] = 24.0,
    json_: JsonOption = False,
) -> None:
    """Rate a CDR file offline into rated.csv, rejected.csv and alerts.csv.

    Example: cdrflow rate cdrs.csv --plans plans/ --accounts accounts.toml --out out/
    (a switch's own file: --format asterisk Master.csv, or --format mapped --profile fs.toml)
    """
    from rating import Catalog
    from streams.cdr_files import CdrFileError
    from streams.offline.rate import rate_file

    feed = feed_or_fail(format_, profile, switch_timezone, switch_id, encoding)
    bounds = _time_bounds(earliest_call, latest_call, ahead_hours)

    def load_catalog() -> Catalog:
        # Called by rate_file while it parses the first chunk of the CDR file.
        catalog = Catalog.from_tariffs(load_or_fail(plans, accounts), horizon_months=horizon_months, time_bounds=bounds)
        # What startup built (modules, the plans and accounts) lives until the end of the
        # run: frozen out of the cycle collector, which main() held off until now.
        gc.freeze()
        gc.enable()
        return catalog

    size = cdrs.stat().st_size if cdrs.is_file() else 0
    bar = progress_bar(disable=json_)
    task = bar.add_task(f"rating {cdrs.name}", total=size)

    def advance(done: int) -> None:
        bar.start()  # at the first call (once the plans are loaded); later calls do nothing
        bar.update(task, completed=done)

    try:
        summary = rate_file(cdrs, load_catalog, out, progress=advance, feed=feed,
                            inputs=[plans, accounts, *([profile] if profile else [])])
    except CdrFileError as exc:
        raise fail(str(exc), ExitCode.BAD_INPUT) from None
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
        "warnings": summary.warnings,
    }
    warn(summary.warnings, str(cdrs))
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


def _time_bounds(earliest: str, latest: str, ahead_hours: float) -> TimeBounds:
    from datetime import timedelta

    from rating.bounds import TimeBounds

    instants = [parse_instant(earliest, "--earliest-call"), parse_instant(latest, "--latest-call")]
    try:
        return TimeBounds(instants[0], instants[1], timedelta(hours=ahead_hours))
    except ValueError as error:
        raise fail(f"--earliest-call/--latest-call: {error}", ExitCode.BAD_INPUT) from None


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
    quirks: Annotated[
        bool,
        typer.Option(
            "--quirks",
            help="Write what real switches write besides: callers as +86/86/same-city/withheld/masked numbers, "
            "a 0 s leg before some answered calls (same id), Chinese names.",
        ),
    ] = False,
    encoding: Annotated[
        str, typer.Option("--encoding", help="utf-8 or gbk (what Excel on Chinese Windows saves).", show_default=True)
    ] = "utf-8",
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
    from streams.offline.generate import generate_dataset

    with progress_bar(disable=json_, bytes_=False) as bar:
        task = bar.add_task("generating CDRs", total=cdrs)
        try:
            made = generate_dataset(
                out, cdrs=cdrs, accounts=accounts, month=month, seed=seed,
                progress=lambda done: bar.update(task, completed=done), cdr_format=format_,
                hot_share=hot_share, quirks=quirks, encoding=encoding,
            )
        except ValueError as exc:
            raise fail(str(exc), ExitCode.BAD_INPUT) from None
        except OSError as exc:
            raise fail(f"{out}: cannot write ({exc.strerror})", ExitCode.BAD_INPUT) from None
    figures = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(made).items()}
    if json_:
        console.print_json(data=figures)
    else:
        console.print(
            f"[green]wrote[/] {made.cdrs:,} CDRs ({made.malformed:,} malformed, {made.resent:,} resent, "
            f"{made.unknown_number:,} to unknown numbers) for {made.accounts:,} accounts with "
            f"{made.numbers:,} numbers: {made.plans_dir}/, {made.accounts_file}, {made.cdrs_file}"
        )


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
    from streams.offline.compare import CompareError, compare_outputs

    try:
        comparison = compare_outputs(expected, actual)
    except CompareError as exc:
        raise fail(str(exc), ExitCode.BAD_INPUT) from None
    if json_:
        console.print_json(data=comparison.to_json(limit))
    else:
        console.print(comparison.report(limit), markup=False, highlight=False, soft_wrap=True)
    if not comparison.ok:
        raise typer.Exit(ExitCode.FAILED)
