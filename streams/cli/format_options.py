"""The ``--format``, ``--profile``, ``--switch-timezone`` and ``--switch-id`` options of
``cdrflow rate`` and ``cdrflow ingest``, and the feed they make (``schemas.switch_formats``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from schemas.switch_formats import FORMATS, Feed, ProfileError

FormatOption = Annotated[
    str,
    typer.Option(
        "--format",
        help=f"What the switch wrote: {', '.join(FORMATS)} (asterisk: cdr_csv Master.csv with loguniqueid "
        "and loguserfield; mapped: described by --profile).",
        show_default=True,
    ),
]
ProfileOption = Annotated[
    Path | None,
    typer.Option("--profile", help="Profile .toml of a --format mapped feed (examples: schemas/profiles/)."),
]
SwitchTimezoneOption = Annotated[
    str | None,
    typer.Option(
        "--switch-timezone",
        help="IANA zone of a switch that writes wall-clock times without an offset (default: the "
        "profile's timezone, else Asia/Shanghai).",
    ),
]
SwitchIdOption = Annotated[
    str | None,
    typer.Option("--switch-id", help="switch_id of every line of a switch format (else the profile's column)."),
]


def make_feed(kind: str, profile: Path | None, switch_timezone: str | None, switch_id: str | None) -> Feed:
    """The feed of the options; ValueError/ProfileError say which option or profile key is wrong."""
    return Feed.of(kind, profile=profile, switch_timezone=switch_timezone, switch_id=switch_id)


__all__ = [
    "FormatOption", "ProfileOption", "SwitchTimezoneOption", "SwitchIdOption", "make_feed", "ProfileError",
]  # fmt: skip
