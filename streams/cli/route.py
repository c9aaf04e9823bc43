"""``cdrflow route``: a thin typer command over :class:`streams.feeds.shipped.ShippedFeed`.

Exit codes: 0 stopped (Ctrl-C or SIGTERM, positions recorded); 1 the broker did not
answer or refused (a restart resumes exactly); 2 bad input (options, no accounts loaded).
"""

from __future__ import annotations

from typing import Annotated

import typer

from streams.cli._common import ExitCode, fail, feed_or_fail, settings_or_fail
from streams.cli.format_options import (
    EncodingOption,
    FormatOption,
    ProfileOption,
    SwitchIdOption,
    SwitchTimezoneOption,
)
from streams.cli.live_display import LiveDisplay, run_until_stopped, tally_figures


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
    encoding: EncodingOption = None,
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
    from streams.catalog.publish import CatalogError
    from streams.feeds.ingest import NothingLoaded
    from streams.feeds.shipped import RouteEvent, ShippedFeed
    from streams.kafka.client import BrokerError

    feed = feed_or_fail(format_, profile, switch_timezone, switch_id, encoding)
    settings = settings_or_fail()
    display = LiveDisplay(
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
        if event.kind == "warning":  # what the reader noticed about a partition's lines
            display.event(figures, f"[bold yellow]warning[/] {event.topic}[{event.partition}]: {event.message}")
            return
        if event.kind == "error":  # the router's, not a partition's: it takes its partitions over again
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
        router = ShippedFeed(
            settings,
            from_topic,
            feed,
            json_field=json_field,
            group=group,
            topic_prefix=settings.topic_prefix,
            on_event=on_event,
        )
    except ValueError as error:
        raise fail(str(error), ExitCode.BAD_INPUT) from None
    with display:
        failure = run_until_stopped(router.run)
    if isinstance(failure, NothingLoaded):
        raise fail(str(failure), ExitCode.BAD_INPUT) from None
    if isinstance(failure, (BrokerError, CatalogError)):
        raise fail(str(failure), ExitCode.FAILED) from None
    if failure is not None:
        raise failure
    display.event({"event": "stopped"}, "stopped: every position recorded and committed")
