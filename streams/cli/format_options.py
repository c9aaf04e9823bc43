"""The ``--format``, ``--profile``, ``--switch-timezone``, ``--switch-id`` and ``--encoding``
options of ``cdrflow rate``, ``ingest`` and ``route``, and the feed they make
(``schemas.switch_formats``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from schemas.switch_formats import ENCODINGS, FORMATS, Feed, ProfileError

FormatOption = Annotated[
    str,
    typer.Option(
        "--format",
        help=f"What the switch wrote: {', '.join(FORMATS)} (asterisk: cdr_csv Master.csv, any of its "
        "16-21 column layouts; mapped: described by --profile).",
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
        "profile's timezone; UTC for asterisk, whose shipped cdr.conf sets usegmtime; else Asia/Shanghai).",
    ),
]
SwitchIdOption = Annotated[
    str | None,
    typer.Option("--switch-id", help="switch_id of every line of a switch format (else the profile's column)."),
]
EncodingOption = Annotated[
    str | None,
    typer.Option(
        "--encoding",
        help=f"Encoding of the file: {', '.join(ENCODINGS)} (default: the profile's, else utf-8; "
        "gbk is what Excel on Chinese Windows saves).",
    ),
]


def make_feed(
    kind: str, profile: Path | None, switch_timezone: str | None, switch_id: str | None, encoding: str | None = None
) -> Feed:
    """The feed of the options; ValueError/ProfileError say which option or profile key is wrong."""
    return Feed.of(kind, profile=profile, switch_timezone=switch_timezone, switch_id=switch_id, encoding=encoding)


__all__ = [
    "FormatOption", "ProfileOption", "SwitchTimezoneOption", "SwitchIdOption", "EncodingOption", "make_feed",
    "ProfileError",
]  # fmt: skip
