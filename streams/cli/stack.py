"""``cdrflow up``, ``down`` and ``status``: thin typer commands over :mod:`streams.stack`.

Plain typer-annotated functions; :mod:`streams.cli.main` registers them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from streams.cli._common import ExitCode, StateDirOption, console, errors, fail, settings_or_fail

# streams.stack pulls in the Kafka and ClickHouse clients: imported inside the commands,
# so `cdrflow rate` and friends do not pay for them.

def up(
    state_dir: StateDirOption = None,
    partitions: Annotated[
        int | None,
        typer.Option(
            "--partitions",
            min=1,
            help="Partitions of each topic created (default: $CDRFLOW_TOPIC_PARTITIONS, else 4).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start the broker and ClickHouse, create the topics and apply the schema.

    Starts them under the state folder unless CDRFLOW_KAFKA_BOOTSTRAP /
    CDRFLOW_CLICKHOUSE_URL name real ones, and waits until they answer. Running it again
    reuses what runs.

    Example: cdrflow up --state-dir /tmp/cdrflow-state
    """
    from streams.clickhouse.migrations import MigrationError
    from streams.stack.embedded import StackError
    from streams.stack.servers import up as start_stack

    settings = settings_or_fail(state_dir=state_dir, topic_partitions=partitions)
    try:
        with console.status("starting the stack") as spinner:
            info = start_stack(settings, progress=lambda line: spinner.update(line))
    except (StackError, MigrationError) as error:
        raise fail(str(error), ExitCode.FAILED) from None
    table = Table(title=f"cdrflow stack ({info.seconds:.1f} s)", title_justify="left")
    for column in ("server", "address", "pid", "log"):
        table.add_column(column)
    for server in info.servers:
        if server.pid is None:
            pid = "external"
        else:
            pid = f"{server.pid} ({'running' if server.reused else 'started'})"
        table.add_row(server.name, server.address, pid, str(server.log or ""))
    console.print(table)
    console.print(f"kafka bootstrap: {info.kafka_bootstrap}", highlight=False)
    console.print(f"clickhouse:      {info.clickhouse_url}", highlight=False)
    if info.topics_created:
        console.print(f"topics created:  {', '.join(info.topics_created)}", highlight=False)
    if info.migrations_applied:
        console.print(f"migrations:      {', '.join(info.migrations_applied)}", highlight=False)
    if info.admin_password_file is not None:
        console.print(
            f"admin (the pipeline): user default, password in {info.admin_password_file} (cdrflow reads it)",
            highlight=False,
        )
    if info.finance_password_file is not None:
        console.print(
            f"finance (read-only SQL): user finance, password in {info.finance_password_file}",
            highlight=False,
        )
    elif settings.embedded_clickhouse:
        console.print("finance (read-only SQL): user finance, password CDRFLOW_FINANCE_PASSWORD", highlight=False)
    for warning in info.warnings:
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False)


def down(
    state_dir: StateDirOption = None,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete the state folder: topics, tables, logs.")
    ] = False,
) -> None:
    """Stop the servers `cdrflow up` started; their data is kept unless --purge.

    SIGTERM, then SIGKILL after 30 s.

    Example: cdrflow down --purge
    """
    from streams.stack.embedded import StackError
    from streams.stack.servers import down as stop_stack

    settings = settings_or_fail(state_dir=state_dir)
    try:
        with console.status("stopping the stack"):
            stopped = stop_stack(settings, purge=purge)
    except StackError as error:
        raise fail(str(error), ExitCode.FAILED) from None
    if stopped:
        console.print(f"stopped: {', '.join(stopped)}", highlight=False)
    else:
        console.print(f"nothing was running from {settings.state_dir}", highlight=False)
    if purge:
        console.print(f"deleted {settings.state_dir}", highlight=False)


def status(
    state_dir: StateDirOption = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the status as JSON for scripts.")
    ] = False,
) -> None:
    """Show servers, topics, partitions, consumer lag, the rating state and ClickHouse tables.

    Topics with their end offsets, consumer-group lag, each partition's rating state
    (generation, size, blocked accounts) as its worker last published it, rows per table.
    Exits with 1 when a server is not up, 3 when an account is blocked or output messages
    were refused into dead_letters. Live feeds' warnings (times written in another zone
    than they are read in) are shown as notes.

    Example: cdrflow status --json
    """
    from streams.settings import redact
    from streams.stack.status import status as stack_status

    settings = settings_or_fail(state_dir=state_dir)
    answer = stack_status(settings)
    # Nothing secret is in it; if a library put one in an error (or ClickHouse in a dead
    # letter's reason), it is *** in the table as in the JSON.
    answer = json.loads(redact(json.dumps(answer)))
    if json_:
        console.print_json(json.dumps(answer))
    else:
        _print_status(answer)
    if any(server["state"] != "up" for server in answer["servers"].values()):
        raise typer.Exit(ExitCode.FAILED)
    if answer["blocked_accounts"] or answer.get("dead_letters"):
        raise typer.Exit(ExitCode.REFUSED)


def topics(
    check: Annotated[
        bool,
        typer.Option("--check", help="Compare with the cluster's own topics (DescribeConfigs); exit 1 on a config "
                     "that can lose data."),
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the topics (and findings) as JSON for scripts.")] = False,
    state_dir: StateDirOption = None,
) -> None:
    """Show every topic cdrflow makes as it wants them: partitions, replication, configs.

    Truth logs (cdr.raw, the catalogue, ingest records, the worker's state) and outputs
    never expire; latest-value topics are compacted. With --check, each is compared with
    the cluster's: a log that expires or is compacted, fewer replicas or in-sync replicas
    than the settings (CDRFLOW_TOPIC_REPLICATION_FACTOR, CDRFLOW_TOPIC_MIN_INSYNC_REPLICAS)
    is a problem (exit 1); another partition count, or a config the broker does not report,
    a warning. docs/operations.md says how to fix each.

    Example: cdrflow topics --check
    """
    from kafka.errors import KafkaError

    from streams.stack.topics import check_topics, wanted_topics

    settings = settings_or_fail(state_dir=state_dir)
    if not check:
        wanted = wanted_topics(settings)
        if json_:
            console.print_json(json.dumps({"topics": [topic.__dict__ for topic in wanted]}))
            return
        _print_topics(wanted, {})
        return
    try:
        report = check_topics(settings)
    except (KafkaError, OSError) as error:
        raise fail(f"could not read the topics of {','.join(settings.kafka_servers())}: {error}", ExitCode.FAILED) from None
    if json_:
        console.print_json(json.dumps({**report.as_json(), "ok": not report.problems}))
    else:
        _print_topics(report.wanted, report.actual)
        for finding in report.findings:
            colour = "red" if finding.severity == "problem" else "yellow"
            errors.print(f"[{colour}]{finding.severity}:[/] {finding.topic}: {finding.message}", highlight=False)
        if not report.problems:
            console.print(f"[green]ok:[/] no topic config of {','.join(settings.kafka_servers())} can lose data",
                          highlight=False)
    if report.problems:
        raise typer.Exit(ExitCode.FAILED)


def _print_topics(wanted: list[Any], actual: dict[str, Any]) -> None:
    table = Table(title="topics as cdrflow wants them" + (" (and as the cluster has them)" if actual else ""),
                  title_justify="left")
    for column in ("topic", "role", "partitions", "replicas", "configs", "made by"):
        table.add_column(column)
    for topic in wanted:
        configs = " ".join(f"{k}={v}" for k, v in topic.configs.items()) or "(Faust's)"
        partitions, replicas = str(topic.partitions or "(Faust's)"), str(topic.replication)
        found = actual.get(topic.name)
        if found is not None:
            partitions += f" / {found['partitions']}"
            replicas += f" / {found['replication']}"
            differing = {k: found["configs"].get(k) for k in topic.configs if found["configs"].get(k) != topic.configs[k]}
            if differing:
                configs += "\n[yellow]cluster: " + " ".join(f"{k}={v}" for k, v in differing.items()) + "[/]"
        table.add_row(topic.name, topic.role, partitions, replicas, configs, topic.made_by)
    console.print(table)


def _print_status(answer: dict[str, Any]) -> None:
    servers = Table(title="servers", title_justify="left")
    for column in ("server", "state", "address", "pid", "log"):
        servers.add_column(column)
    colours = {"up": "green", "down": "red"}
    for name, server in answer["servers"].items():
        state = server["state"]
        servers.add_row(
            name,
            f"[{colours.get(state, 'yellow')}]{state}[/]",
            server["address"],
            "external" if server["external"] else str(server["pid"] or ""),
            server["log"] or "",
        )
    console.print(servers)
    console.print(f"kafka bootstrap: {answer['kafka_bootstrap']}", highlight=False)
    console.print(f"clickhouse:      {answer['clickhouse_url']}", highlight=False)

    if answer["topics"]:
        topics = Table(title="topics", title_justify="left")
        for column, justify in (
            ("topic", "left"),
            ("partitions", "right"),
            ("sum of ends", "right"),
            ("end offsets", "left"),
        ):
            topics.add_column(column, justify=justify)
        for name, topic in answer["topics"].items():
            ends = topic["end_offsets"]
            known = [end for end in ends.values() if end is not None]
            topics.add_row(
                name,
                str(topic["partitions"]),
                f"{sum(known):,}",
                " ".join(
                    f"{partition}:{'?' if end is None else end}" for partition, end in ends.items()
                ),
            )
        console.print(topics)
    if answer["consumer_groups"]:
        groups = Table(title="consumer groups", title_justify="left")
        for column, justify in (("group", "left"), ("lag", "right"), ("lag by partition", "left")):
            groups.add_column(column, justify=justify)
        for name, group in answer["consumer_groups"].items():
            behind = " ".join(f"{tp}:{lag}" for tp, lag in group["partitions"].items() if lag)
            groups.add_row(name, f"{group['lag']:,}", behind)
        console.print(groups)
    if answer["clickhouse_tables"]:
        tables = Table(title="clickhouse tables", title_justify="left")
        for column, justify in (("table", "left"), ("engine", "left"), ("rows", "right")):
            tables.add_column(column, justify=justify)
        for name, table in answer["clickhouse_tables"].items():
            rows = "" if table["rows"] is None else f"{table['rows']:,}"
            tables.add_row(name, table["engine"], rows)
        console.print(tables)
    if answer["rejects_by_reason"]:
        rejects = Table(title="rejects by reason", title_justify="left")
        rejects.add_column("reason")
        rejects.add_column("lines", justify="right")
        for reason, count in answer["rejects_by_reason"].items():
            rejects.add_row(reason, f"{count:,}")
        console.print(rejects)
    if answer.get("worker_state"):
        state = Table(title="rating state (worker.status)", title_justify="left")
        for column, justify in (
            ("partition", "right"), ("worker", "left"), ("generation", "right"), ("accounts", "right"),
            ("live bytes", "right"), ("largest value", "right"), ("appended since roll", "right"),
            ("checkpoint", "right"), ("blocked", "right"), ("at", "left"),
        ):
            state.add_column(column, justify=justify)
        for partition, figures in answer["worker_state"].items():
            blocked = len(figures.get("blocked", {}))
            state.add_row(
                str(partition), figures.get("worker", ""), str(figures.get("generation", "")),
                f"{figures.get('accounts', 0):,}", f"{figures.get('live_bytes', 0):,}",
                f"{figures.get('largest_value', 0):,}", f"{figures.get('appended_bytes', 0):,}",
                f"{figures.get('checkpoint', 0):,}", f"[red]{blocked}[/]" if blocked else "0",
                str(figures.get("at", ""))[:19],
            )
        console.print(state)
    if answer.get("blocked_accounts"):
        blocked = Table(title="blocked accounts: their lines wait in cdr.raw (cdrflow blocked retry|skip ACCOUNT; "
                        "a worker restart tries them too)", title_justify="left")
        for column in ("account", "partition", "first offset", "since", "error"):
            blocked.add_column(column)
        for account, failure in answer["blocked_accounts"].items():
            blocked.add_row(account, str(failure.get("partition", "")), str(failure.get("offset", "")),
                            str(failure.get("at", ""))[:19], str(failure.get("error", "")))
        console.print(blocked)
    for problem in answer.get("topic_problems", []):
        errors.print(f"[red]topic config can lose data:[/] {problem} (cdrflow topics --check)", highlight=False)
    for note in answer["notes"]:
        console.print(f"note: {note}", highlight=False)
    for error in answer["errors"]:
        errors.print(f"[yellow]could not read[/] {error}", highlight=False)
