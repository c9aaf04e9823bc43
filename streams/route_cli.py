"""``cdrflow route``: a thin typer command over :class:`streams.route.Router`.

Exit codes: 0 stopped (Ctrl-C or SIGTERM, positions recorded); 1 the broker did not
answer or refused (a restart resumes exactly); 2 bad input (options, no accounts loaded).
"""

from __future__ import annotations

from typing import Annotated

import typer

from streams.format_options import FormatOption, ProfileOption, SwitchIdOption, SwitchTimezoneOption

EXIT_UNREACHABLE = 1
EXIT_BAD_INPUT = 2


def route(
    from_topic: Annotated[
        str,
        typer.Option(
            "--from-topic",
            help="The topic a switch or log shipper writes, one switch line per message (raw, or JSON with --json-field).",
            show_default=False,
        ),
    ],
    format_: FormatOption = "canonical",
    json_field: Annotated[
        str | None,
        typer.Option(
            "--json-field",
            help="Messages are JSON objects holding the line in this field: message (Vector, Filebeat), log "
            "(Fluent Bit); dots go into nested objects. Without it, a message is the raw line.",
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option("--group", help="Consumer group of the routers of this topic (default cdrflow-route.TOPIC)."),
    ] = None,
    profile: ProfileOption = None,
    switch_timezone: SwitchTimezoneOption = None,
    switch_id: SwitchIdOption = None,
    json_: Annotated[bool, typer.Option("--json", help="Print each event as one JSON line, for scripts.")] = False,
) -> None:
    """Route a foreign topic of switch lines to the workers, exactly as ingest routes files.

    Each message is one line of the switch's CSV (--format as for ingest). Lines are
    framed, malformed and unknown-number lines rejected with source TOPIC[PARTITION] and
    line = offset, the rest sent to their accounts' partitions. Several routers (same
    --group) share the topic's partitions; a restart, even after kill -9, neither skips
    nor repeats a line. Runs until Ctrl-C or SIGTERM.

    Example: cdrflow route --from-topic switch.lines --format asterisk --json-field message
    """
    from streams import cli
    from streams.edge_cli import EdgeDisplay, run_until_stopped, tally_figures
    from streams.ingest import NothingLoaded
    from streams.kafka_io import BrokerError
    from streams.load import CatalogError
    from streams.route import RouteEvent, Router
    from streams.stack_cli import _settings

    try:
        feed = cli.make_feed(format_, profile, switch_timezone, switch_id)
    except ValueError as error:
        raise cli.fail(str(error), EXIT_BAD_INPUT) from None
    settings = _settings()
    display = EdgeDisplay(
        f"routing {from_topic} (Ctrl-C to stop)",
        ("partition", "next offset", "lines", "to cdr.raw", "rejected"),
        json_=json_,
    )

    def on_event(event: RouteEvent) -> None:
        figures = {
            "event": event.kind,
            "topic": event.topic,
            "partition": event.partition,
            "next_offset": event.next_offset,
            **({"message": event.message} if event.message else {}),
            **tally_figures(event.tally),
        }
        if event.kind == "error":  # the router's, not a partition's: it joins again
            del figures["partition"], figures["next_offset"]
            display.event(figures, f"[red]error[/] {event.topic}: {event.message}")
            return
        shown = None if event.kind == "progress" else f"[cyan]{event.kind}[/] {event.topic}[{event.partition}] {event.message}"
        display.event(figures, shown)
        tally = event.tally
        display.row(
            f"{event.topic}[{event.partition}]",
            (
                f"{event.topic}[{event.partition}]",
                f"{event.next_offset:,}",
                f"{tally.lines:,}" if tally else "-",
                f"{tally.accepted:,}" if tally else "-",
                f"{sum(tally.rejected.values()):,}" if tally else "-",
            ),
        )

    try:
        router = Router(
            settings,
            from_topic,
            feed,
            json_field=json_field,
            group=group,
            topic_prefix=settings.topic_prefix,
            on_event=on_event,
        )
    except ValueError as error:
        raise cli.fail(str(error), EXIT_BAD_INPUT) from None
    with display:
        failure = run_until_stopped(router.run)
    if isinstance(failure, NothingLoaded):
        raise cli.fail(str(failure), EXIT_BAD_INPUT) from None
    if isinstance(failure, (BrokerError, CatalogError)):
        raise cli.fail(str(failure), EXIT_UNREACHABLE) from None
    if failure is not None:
        raise failure
    display.event({"event": "stopped"}, "stopped: every position recorded and committed")
