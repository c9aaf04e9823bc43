"""What switches write, turned into canonical CDR batches (spec/rating.md 2.3) at framing.

Three formats (``--format``):

- ``canonical``: the canonical CSV itself (:mod:`schemas.cdr_csv`);
- ``asterisk``: Asterisk cdr_csv's ``Master.csv``: no header, quoted text, unquoted
  integers, times ``YYYY-MM-DD HH:MM:SS`` (UTC by default: the shipped cdr.conf sets
  ``usegmtime=yes``), ``answer`` empty when unanswered. Every layout cdr_csv writes is
  read, line by line, by its number of columns (:data:`ASTERISK_LAYOUTS`: 16 with the
  module's defaults, 18 with ``loguniqueid`` and ``loguserfield``, 21 with
  ``newcdrcolumns`` too, and those between). ``cdr_id`` = uniqueid, ``caller`` = src,
  ``called`` = dst, ``answer_number`` = userfield, else the number ``Dial`` was given;
- ``mapped``: any other delimited or fixed-width format, described by a :class:`Profile`
  (a TOML file, see ``schemas/profiles/`` and docs/formats.md). Asterisk is such a
  profile, built in.

Every format becomes the same raw batch: ``line`` (physical line of the file, the first
line is 1), the 12 canonical columns as text, ``caller_origin`` (how the caller was
placed, switch formats only) and ``framing`` (why a line cannot be read, or null). Times
are rewritten as ISO 8601 with their offset, dispositions mapped, the dialled number
normalised, and, when the format has no area columns, ``caller_area`` / ``answer_area``
placed from the numbers (:mod:`schemas.numbering`). A line that is not a record (a
comment, a blank line, a fixed-width file's header or trailer, when the profile says
so) keeps its row with ``framing`` = :data:`NOT_A_RECORD`, and gets no output. Everything
is done on whole columns. Pure: bytes in, frames out (reading a profile file is
:func:`load_profile`'s one read); what the reader noticed about a file (its times
written in another zone than they are read in) is gathered in :class:`FeedNotes`.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import polars as pl
import rtoml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.cdr_csv import (
    BATCH_SCHEMA,
    MAX_LINE_BYTES,
    NOT_A_RECORD,
    HeaderError,
    judge_line,
    line_bounds,
    parse_chunk,
    read_fields,
    read_header,
)
from schemas.columns import ANSWER_PROBLEM, CDR_COLUMNS

FORMATS: Final[tuple[str, ...]] = ("canonical", "asterisk", "mapped")
DEFAULT_SWITCH_TIMEZONE: Final[str] = "Asia/Shanghai"
#: Where the example profiles are shipped.
PROFILES_DIR: Final[Path] = Path(__file__).parent / "profiles"
#: Encodings a feed may be read in (``--encoding``, a profile's ``encoding``): UTF-8, UTF-8
#: with a byte order mark, and what Excel on Chinese Windows saves (GBK, read as its
#: superset GB18030).
ENCODINGS: Final[tuple[str, ...]] = ("utf-8", "utf-8-sig", "gb18030", "gbk", "gb2312")
_BOM: Final[bytes] = codecs.BOM_UTF8

#: Asterisk cdr_csv Master.csv with loguniqueid=yes and loguserfield=yes, in file order.
ASTERISK_COLUMNS: Final[tuple[str, ...]] = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp", "lastdata",
    "start", "answer", "end", "duration", "billsec", "disposition", "amaflags", "uniqueid", "userfield",
)  # fmt: skip
#: Every layout Asterisk's cdr_csv writes (cdr_csv.c build_csv_record): its 16 columns,
#: then uniqueid (loguniqueid), userfield (loguserfield), and peeraccount, linkedid,
#: sequence (newcdrcolumns), in that order, each when switched on.
ASTERISK_LAYOUTS: Final[dict[int, tuple[str, ...]]] = {
    16: ASTERISK_COLUMNS[:16],
    17: (*ASTERISK_COLUMNS[:16], "uniqueid or userfield"),
    18: ASTERISK_COLUMNS,
    19: (*ASTERISK_COLUMNS[:16], "peeraccount", "linkedid", "sequence"),
    20: (*ASTERISK_COLUMNS[:16], "uniqueid or userfield", "peeraccount", "linkedid", "sequence"),
    21: (*ASTERISK_COLUMNS, "peeraccount", "linkedid", "sequence"),
}
#: The format Asterisk writes times in (no offset; a fraction is read too).
ASTERISK_TIME_FORMAT: Final[str] = "%Y-%m-%d %H:%M:%S"
#: Asterisk's shipped cdr.conf.sample sets usegmtime=yes: ordinary installs write UTC.
ASTERISK_TIMEZONE: Final[str] = "UTC"
#: ``time_format`` value for times that carry their offset (as the canonical format's).
ISO_TIMES: Final[str] = "iso8601"
#: ``time_format`` values for times written as seconds or milliseconds since 1970 (UTC).
EPOCH_TIMES: Final[tuple[str, ...]] = ("epoch", "epoch_ms")

#: An Asterisk uniqueid: ``<epoch>.<n>``, after ``<systemname>-`` when one is set.
_UNIQUEID = r"^((?:\S+-)?\d{9,10}\.\d+)$"
_UNIQUEID_EPOCH = r"(?:^|-)(\d{9,10})\.\d+$"
#: A number written on its own (userfield).
_PLAIN_NUMBER = r"^\s*(\+?\d[\d\s\-]{3,})\s*$"
#: The number in Dial's first argument: ``SIP/ct-bj/01088886666,60`` -> 01088886666.
_DIAL_NUMBER = r"^[^,&|]*?/(\+?\d{5,})(?:@[^,&|]*)?(?:[,&|]|$)"

_REQUIRED_FIELDS: Final[tuple[str, ...]] = tuple(
    c for c in CDR_COLUMNS if c not in ("switch_id", "caller_area", "answer_area")
)
_TIME_FIELDS: Final[tuple[str, ...]] = ("start_time", "answer_time", "end_time")
#: What a profile may derive a field from, when the format does not write it.
DERIVATIONS: Final[dict[str, tuple[str, ...]]] = {
    "start_time": ("answer_time",),
    "answer_time": ("start_time", "end_time - billsec"),
    "end_time": ("answer_time + billsec", "start_time + billsec", "start_time + duration"),
    "billsec": ("end_time - answer_time",),
}

CanonicalField = Literal[
    "cdr_id", "switch_id", "caller", "called", "answer_number", "caller_area", "answer_area",
    "start_time", "answer_time", "end_time", "billsec", "disposition",
]  # fmt: skip
#: Fields a profile may read besides the canonical ones: the call's duration (for
#: ``end_time = "start_time + duration"``) and the start as epoch seconds (a uniqueid),
#: against which the reader checks the zone the times are written in.
ExtraField = Literal["duration", "start_epoch"]
Disposition = Literal["ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION"]


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the key."""


#: The profile models' validators are built when a profile is first read, not at import:
#: a canonical `cdrflow rate` reads none, and starts ~10 ms sooner.
_PROFILE_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class FieldSpec(BaseModel):
    """Where a field comes from: a ``column`` (name, or position from 1), a fixed-width
    ``slice`` (``[start, end]`` byte offsets, from 0, end excluded), a constant ``value``,
    or the ``hash`` of some columns (an id for formats that write none); then an
    optional ``regex`` whose first group (or whole match) is taken."""

    model_config = _PROFILE_MODEL_CONFIG

    column: str | int | None = None
    slice: tuple[int, int] | None = None
    value: str | None = None
    hash: Annotated[list[str | int], Field(min_length=1)] | None = None
    regex: str | None = None

    @field_validator("column", mode="before")
    @classmethod
    def _named(cls, value: Any) -> str | int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not (
            (isinstance(value, str) and value.strip()) or (isinstance(value, int) and value >= 1)
        ):
            raise ValueError(f"a column is a name or a position from 1, got {value!r}")
        return value

    @field_validator("slice")
    @classmethod
    def _slice(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 0 <= value[0] < value[1]:
            raise ValueError(f"a slice is [start, end] with 0 <= start < end, got {list(value)}")
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compiled = re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
            if compiled.groups > 1:
                raise ValueError("use at most one capturing group (the part to take); (?:...) groups others")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        given = [k for k in ("column", "slice", "value", "hash") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give one of column, slice, value or hash (got {', '.join(given) or 'none'})")
        return self

    @property
    def columns(self) -> list[str | int]:
        """The delimited columns it reads."""
        return [self.column] if self.column is not None else list(self.hash or [])


def _shorthand(value: Any) -> Any:
    # `caller = "src"` or `caller = 2` is short for `caller = { column = ... }`, and one
    # source for a list of one.
    if isinstance(value, list):
        return [_shorthand(v)[0] if not isinstance(v, list) else v for v in value]
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [{"column": value}]
    return [value]


#: A field from the first of its sources that is not empty.
Sources = Annotated[list[FieldSpec], Field(min_length=1)]


class DispositionRule(BaseModel):
    """Switch values that become one canonical disposition, optionally only for some
    billsec; without ``values`` the rule takes any value."""

    model_config = _PROFILE_MODEL_CONFIG

    values: Annotated[list[str], Field(min_length=1)] | None = None
    to: Disposition
    billsec: Literal["positive", "zero"] | None = None


class DispositionMap(BaseModel):
    """Rules tried in order; ``otherwise`` for a value no rule takes (unset: kept as it is)."""

    model_config = _PROFILE_MODEL_CONFIG

    rules: list[DispositionRule] = []
    otherwise: Disposition | None = None


class Profile(BaseModel):
    """A declarative description of one switch's file format (docs/formats.md)."""

    model_config = _PROFILE_MODEL_CONFIG

    name: str
    header: bool = True
    #: ``delimited`` (a separator between fields) or ``fixed`` (fields at byte offsets).
    layout: Literal["delimited", "fixed"] = "delimited"
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    #: Fields may be quoted ("..."), as most switches write them.
    quoted: bool = True
    #: How quotes inside a quoted field are written: ``lenient`` (as they come: FreeSWITCH
    #: writes a caller's name between quotes without escaping it) or ``rfc4180`` (doubled:
    #: any other quote makes the line malformed, as for Asterisk, which doubles them).
    quotes: Literal["lenient", "rfc4180"] = "lenient"
    #: Blanks around each field are dropped (`a, b`, `"a", "b"`).
    trim: bool = False
    #: Columns of a line; required without a header (a line with another count is malformed).
    columns_per_line: Annotated[int, Field(ge=1)] | None = None
    #: Lines that begin with this are comments: no record, no output.
    comment: Annotated[str, Field(min_length=1)] | None = None
    #: Blank lines are no record (else a blank line is malformed).
    skip_blank: bool = False
    #: Only lines that begin with this are records (a fixed-width file's header and
    #: trailer records are not).
    records: Annotated[str, Field(min_length=1)] | None = None
    encoding: str = "utf-8"
    time_format: str = ASTERISK_TIME_FORMAT
    #: ``seconds`` (``125``; a fraction is rounded half up) or ``hms`` (``00:02:05``, ``000205``).
    duration_format: Literal["seconds", "hms"] = "seconds"
    #: IANA zone of the switch's wall-clock times; unset: --switch-timezone.
    timezone: str | None = None
    #: The switch id of every line, when no column holds one (--switch-id overrides it).
    switch_id: str | None = None
    #: Area code of the platform's own city: a number written without its area code
    #: (a same-city caller, an answering number), or the answering side of a format that
    #: does not record the answering number.
    default_area: str | None = None
    #: Routing prefixes a switch puts before the dialled number (stripped, longest first).
    called_prefixes: list[Annotated[str, Field(pattern=r"^\+?\d{1,10}$")]] = []
    columns: dict[CanonicalField | ExtraField, Sources]
    #: Columns by the number of fields of a line, for formats whose lines differ (what
    #: Asterisk writes with other cdr.conf settings): these win over ``columns``.
    columns_by_width: dict[Annotated[int, Field(ge=1)], dict[CanonicalField | ExtraField, Sources]] = {}
    #: Fields the format does not write, worked out from others (:data:`DERIVATIONS`).
    derive: dict[Literal["start_time", "answer_time", "end_time", "billsec"], str] = {}
    disposition: DispositionMap = DispositionMap()

    @field_validator("columns", mode="before")
    @classmethod
    def _short_columns(cls, value: Any) -> Any:
        return {k: _shorthand(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("columns_by_width", mode="before")
    @classmethod
    def _short_widths(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {w: {k: _shorthand(v) for k, v in cols.items()} if isinstance(cols, dict) else cols for w, cols in value.items()}

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            check_timezone(value)
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        return check_encoding(value)

    @field_validator("default_area")
    @classmethod
    def _area(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"0[1-9]\d{1,2}", value):
            raise ValueError(f"must be a domestic area code like 010 or 0755, got {value!r}")
        return value

    @field_validator("time_format")
    @classmethod
    def _time_format(cls, value: str) -> str:
        if value not in (ISO_TIMES, *EPOCH_TIMES) and not all(code in value for code in ("%Y", "%m", "%d", "%H", "%M")):
            raise ValueError(
                f"must be {ISO_TIMES!r}, 'epoch', 'epoch_ms' or a strftime format with %Y, %m, %d, %H and %M"
            )
        return value

    @field_validator("derive")
    @classmethod
    def _derivations(cls, value: dict[str, str]) -> dict[str, str]:
        for name, how in value.items():
            if how not in DERIVATIONS[name]:
                raise ValueError(f"{name} can be derived as {' or '.join(map(repr, DERIVATIONS[name]))}, not {how!r}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Profile:
        for width, mapping in self.mappings().items():
            where = "columns" if width is None else f"columns_by_width.{width}"
            missing = [n for n in _REQUIRED_FIELDS if n not in mapping and n not in self.derive]
            if missing:
                raise ValueError(f"{where}: missing {', '.join(missing)} (each canonical field needs a column)")
            if ("caller_area" in mapping) != ("answer_area" in mapping):
                raise ValueError(f"{where}: give both caller_area and answer_area, or neither (then they are derived)")
            for name in self.derive:
                if name in mapping:
                    raise ValueError(f"{where}.{name}: the field has a column and is derived; give one of them")
        if self.derive and self.time_format == ISO_TIMES:
            raise ValueError("derive: times in iso8601 are taken as written; derive works with the other time formats")
        if "duration" in (self.derive.get("end_time") or "") and any("duration" not in m for m in self.mappings().values()):
            raise ValueError("derive.end_time: 'start_time + duration' needs a duration column")
        specs = [spec for mapping in self.mappings().values() for sources in mapping.values() for spec in sources]
        if self.layout == "fixed":
            if self.header or self.columns_by_width:
                raise ValueError("layout = 'fixed': a fixed-width file has no header line and one layout (set header = false)")
            if any(spec.column is not None for spec in specs):
                raise ValueError("layout = 'fixed': fields are slices ([start, end] byte offsets), not columns")
            return self
        if any(spec.slice is not None for spec in specs):
            raise ValueError("slices are for layout = 'fixed'; a delimited format names columns")
        if not self.header:
            widths = sorted(self.columns_by_width) or ([self.columns_per_line] if self.columns_per_line else [])
            if not widths:
                raise ValueError("columns_per_line is required when header = false")
            for width, mapping in self.mappings().items():
                for name, sources in mapping.items():
                    for spec in sources:
                        for column in spec.columns:
                            if isinstance(column, str):
                                raise ValueError(f"columns.{name}: without a header, a column is a position (1, 2, ...)")
                            limit = width if width is not None else min(widths)
                            if column > limit:
                                raise ValueError(
                                    f"columns.{name}: column {column} > columns_per_line {limit}"
                                    if width is None and not self.columns_by_width
                                    else f"columns.{name}: column {column} > {limit} columns"
                                )
        elif self.columns_by_width:
            raise ValueError("columns_by_width is for headerless formats (a header names one layout)")
        return self

    def mappings(self) -> dict[int | None, dict[str, Sources]]:
        """Field sources per line width (None: the one layout of ``columns``)."""
        if not self.columns_by_width:
            return {None: dict(self.columns)}
        return {width: {**self.columns, **extra} for width, extra in sorted(self.columns_by_width.items())}

    @property
    def widths(self) -> tuple[int, ...]:
        """The numbers of fields a line may have (headerless delimited formats)."""
        if self.columns_by_width:
            return tuple(sorted(self.columns_by_width))
        return (self.columns_per_line,) if self.columns_per_line else ()

    @property
    def derives_areas(self) -> bool:
        return all("caller_area" not in mapping for mapping in self.mappings().values())

    @property
    def wall_clock(self) -> bool:
        """Whether its times are wall-clock times of a zone (not ISO with offsets, not epoch)."""
        return self.time_format not in (ISO_TIMES, *EPOCH_TIMES)


def check_timezone(name: str) -> ZoneInfo:
    """The zone of an IANA name, or ValueError saying it is not one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA timezone name (e.g. Asia/Shanghai)") from None


def check_encoding(name: str) -> str:
    """The encoding's name as cdrflow reads it, or ValueError naming the ones it reads.

    Examples
    --------
    >>> check_encoding("GBK"), check_encoding("UTF8")
    ('gb18030', 'utf-8')
    """
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        codec = ""
    if codec in ("gbk", "gb2312", "gb18030"):
        return "gb18030"  # GB18030 decodes every GBK and GB2312 byte sequence the same way
    if codec in ("utf-8", "utf-8-sig"):
        return codec
    raise ValueError(f"encoding {name!r} is not one cdrflow reads: {', '.join(ENCODINGS)}")


def asterisk_profile() -> Profile:
    """Asterisk cdr_csv Master.csv, every layout (:data:`ASTERISK_LAYOUTS`), as a profile.

    ``cdr_id`` is the uniqueid; a line without one gets the linkedid (19 columns), or a
    hash of its channel and start (16 columns: the same line always has the same id).
    ``answer_number`` is the userfield when it holds a number, else the number Dial was
    given (``lastdata`` ``SIP/ct-bj/01088886666,60``).
    """
    dial = FieldSpec(column=9, regex=_DIAL_NUMBER)
    by_channel = FieldSpec(hash=[6, 10])

    def number(column: int) -> list[FieldSpec]:
        return [FieldSpec(column=column, regex=_PLAIN_NUMBER), dial]

    def epoch(column: int) -> list[FieldSpec]:
        return [FieldSpec(column=column, regex=_UNIQUEID_EPOCH)]

    return Profile(
        name="asterisk",
        header=False,
        quotes="rfc4180",
        time_format=ASTERISK_TIME_FORMAT,
        timezone=ASTERISK_TIMEZONE,
        columns={
            name: [FieldSpec(column=column)]
            for name, column in (
                ("caller", 2), ("called", 3), ("start_time", 10), ("answer_time", 11), ("end_time", 12),
                ("duration", 13), ("billsec", 14), ("disposition", 15),
            )
        },  # fmt: skip
        columns_by_width={
            16: {"cdr_id": [by_channel], "answer_number": [dial]},
            17: {
                "cdr_id": [FieldSpec(column=17, regex=_UNIQUEID), by_channel],
                "answer_number": number(17),
                "start_epoch": epoch(17),
            },
            18: {"cdr_id": [FieldSpec(column=17)], "answer_number": number(18), "start_epoch": epoch(17)},
            19: {"cdr_id": [FieldSpec(column=18)], "answer_number": [dial]},
            20: {
                "cdr_id": [FieldSpec(column=17, regex=_UNIQUEID), FieldSpec(column=19)],
                "answer_number": number(17),
                "start_epoch": epoch(17),
            },
            21: {"cdr_id": [FieldSpec(column=17)], "answer_number": number(18), "start_epoch": epoch(17)},
        },
        disposition=DispositionMap(rules=[DispositionRule(values=["CANCEL"], to="NO ANSWER")]),
    )


def load_profile(path: Path) -> Profile:
    """Read and check a profile file; :class:`ProfileError` names the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: profile file not found") from None
    except IsADirectoryError:
        raise ProfileError(f"{path}: is a folder, expected a profile .toml file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = rtoml.loads(text)
    except rtoml.TomlParsingError as exc:
        raise ProfileError(f"{path}: not valid TOML: {' '.join(str(exc).split())}") from None
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            parts = [str(part) for part in error["loc"] if not str(part).startswith("function-after")]
            # A field's sources are a list; one source is written without one.
            parts = [
                p for i, p in enumerate(parts)
                if not (p.isdigit() and ((i >= 2 and parts[i - 2] == "columns") or (i >= 3 and parts[i - 3] == "columns_by_width")))
            ]
            key = ".".join(parts)
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            elif error["type"] == "missing":
                message = "required key missing"
            problems.append(f"key {key or '(top level)'}: {message}")
        raise ProfileError(f"{path}: " + "; ".join(dict.fromkeys(problems))) from None


# ----------------------------------------------------------------------------- feeds


@dataclass
class FeedNotes:
    """What the reader noticed about the lines of one feed, to be said loudly (stderr,
    ``--json``, ``cdrflow status``): not a line's problem, but the whole file's.

    ``zones`` counts lines by (the UTC offset their times are written at, as the epoch in
    their uniqueid shows; the offset they are read at), in seconds.
    """

    zones: Counter[tuple[int, int]] = field(default_factory=Counter)
    #: Lines of Asterisk's 16-column layout read in the default zone.
    local_layout_lines: int = 0
    #: Lines read, and those rejected because their bytes are not of the feed's encoding.
    lines: int = 0
    undecoded_lines: int = 0

    def add(self, other: FeedNotes) -> None:
        self.zones.update(other.zones)
        self.local_layout_lines += other.local_layout_lines
        self.lines += other.lines
        self.undecoded_lines += other.undecoded_lines

    def warnings(self, feed: Feed) -> list[str]:
        """One sentence per thing an operator must know (empty when all is well).

        Examples
        --------
        >>> notes = FeedNotes(zones=Counter({(0, 28800): 98, (28800, 28800): 2}))
        >>> notes.warnings(Feed.of("asterisk", switch_timezone="Asia/Shanghai"))[0][:90]
        'times are written in UTC+00:00 (the epoch in the uniqueid says so on 98 of 100 lines), but'
        """
        said = []
        checked = sum(self.zones.values())
        wrong = sum(count for (written, read), count in self.zones.items() if written != read)
        if checked and wrong * 2 > checked:
            written, _ = max(self.zones.items(), key=lambda item: item[1])[0]
            zones_read = sorted({read for (w, read) in self.zones if w == written})
            said.append(
                f"times are written in UTC{_offset_text(written)} (the epoch in the uniqueid says so on "
                f"{sum(c for (w, _), c in self.zones.items() if w == written)} of {checked} lines), but they are "
                f"read in {feed.timezone} (UTC{', '.join(_offset_text(r) for r in zones_read)}): off-peak hours, "
                f"local days and months are wrong. Rate with --switch-timezone "
                f"{'UTC' if written == 0 else 'the zone of the switch'}"
                + (" (Asterisk's usegmtime=yes)" if written == 0 else "")
            )
        if self.undecoded_lines * 2 > self.lines and feed.encoding.startswith("utf-8"):
            said.append(
                f"{self.undecoded_lines} of {self.lines} lines are not UTF-8: is the file GBK (what Excel on "
                "Chinese Windows saves)? Read it with --encoding gbk"
            )
        if self.local_layout_lines and not feed.timezone_given:
            said.append(
                f"{self.local_layout_lines} lines have Asterisk's 16-column layout (cdr.conf without usegmtime, "
                f"loguniqueid and loguserfield): such times are the host's local time, read here as "
                f"{feed.timezone}; say the host's zone with --switch-timezone"
            )
        return said


def _offset_text(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    minutes = abs(seconds) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True)
class Feed:
    """How to read the files of one run: the format, its profile, the switch's zone, id
    and encoding.

    Examples
    --------
    >>> Feed.canonical().describe()
    'canonical'
    >>> Feed.of("asterisk", switch_timezone="Asia/Shanghai", switch_id="ast-bj1").describe()
    'asterisk (times in Asia/Shanghai, switch ast-bj1)'
    """

    kind: str = "canonical"
    profile: Profile | None = None
    timezone: str = DEFAULT_SWITCH_TIMEZONE
    switch_id: str | None = None
    encoding: str = "utf-8"
    #: Whether the zone was said (--switch-timezone, or the profile's): else a default.
    timezone_given: bool = False

    @classmethod
    def canonical(cls) -> Feed:
        return cls()

    @classmethod
    def of(
        cls,
        kind: str,
        *,
        profile: Path | None = None,
        switch_timezone: str | None = None,
        switch_id: str | None = None,
        encoding: str | None = None,
    ) -> Feed:
        """The feed of ``--format``, ``--profile``, ``--switch-timezone``, ``--switch-id``,
        ``--encoding``.

        ValueError (or :class:`ProfileError`) says which option is wrong.
        """
        if kind not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {kind!r}")
        if kind == "mapped" and profile is None:
            raise ValueError("--format mapped needs --profile FILE.toml (examples in schemas/profiles/)")
        if kind != "mapped" and profile is not None:
            raise ValueError(f"--profile is for --format mapped, not {kind}")
        if kind == "canonical" and (switch_timezone is not None or switch_id is not None):
            raise ValueError(
                "--switch-timezone and --switch-id are for switch formats: canonical lines carry "
                "their offsets and switch ids"
            )
        if switch_timezone is not None:
            check_timezone(switch_timezone)
        loaded = None
        if kind == "asterisk":
            loaded = asterisk_profile()
        elif kind == "mapped":
            assert profile is not None
            loaded = load_profile(profile)
        zone = switch_timezone or (loaded.timezone if loaded and loaded.timezone else DEFAULT_SWITCH_TIMEZONE)
        given = switch_timezone is not None or (kind == "mapped" and loaded is not None and loaded.timezone is not None)
        chosen = check_encoding(encoding) if encoding is not None else (loaded.encoding if loaded else "utf-8")
        return cls(kind=kind, profile=loaded, timezone=zone, switch_id=switch_id, encoding=chosen, timezone_given=given)

    def describe(self) -> str:
        parts = [] if self.encoding == "utf-8" else [f"encoding {self.encoding}"]
        if self.profile is None:
            return "canonical" + (f" ({', '.join(parts)})" if parts else "")
        name = self.kind if self.kind == "asterisk" else f"mapped profile {self.profile.name}"
        if self.profile.wall_clock:
            parts.insert(0, f"times in {self.timezone}")
        if self.switch_id:
            parts.append(f"switch {self.switch_id}")
        return name + (f" ({', '.join(parts)})" if parts else "")

    @property
    def has_header(self) -> bool:
        return self.profile is None or self.profile.header

    def decode_header(self, header: bytes) -> bytes:
        """A header line as UTF-8 (its byte order mark dropped); HeaderError if it cannot be."""
        if self.encoding not in ("utf-8", "utf-8-sig"):
            try:
                return header.decode(self.encoding).encode()
            except UnicodeDecodeError:
                raise HeaderError(f"line 1: the header is not {self.encoding} text") from None
        return header.removeprefix(_BOM)

    def layout(self, header: bytes | None) -> Layout:
        """How to parse this feed's data lines, from its header line (None: headerless).

        :class:`schemas.cdr_csv.HeaderError` says what is wrong with the header.
        """
        if self.profile is None:
            assert header is not None
            return Layout(self, read_header(self.decode_header(header)), {})
        profile = self.profile
        if profile.layout == "fixed":
            return Layout(self, (), {None: dict(profile.columns)})
        if not profile.header:
            width = max(profile.widths)
            names = tuple(f"c{i}" for i in range(1, width + 1))
            return Layout(self, names, _picked(profile, lambda key, column: f"c{column}"))
        assert header is not None
        names = _header_names(self.decode_header(header), profile.delimiter)

        # Columns are read under their positions (c1, c2, ...): a switch's own names may
        # be anything, "line" and "framing" included.
        def resolve(key: str, column: str | int) -> str:
            if isinstance(column, int):
                if column > len(names):
                    raise HeaderError(
                        f"line 1: the header has {len(names)} columns; profile key columns.{key} asks for column {column}"
                    )
                return f"c{column}"
            if column not in names:
                raise HeaderError(f"line 1: the header has no column {column!r} (profile key columns.{key})")
            return f"c{names.index(column) + 1}"

        return Layout(self, tuple(f"c{i}" for i in range(1, len(names) + 1)), _picked(profile, resolve))


def _picked(profile: Profile, resolve: Any) -> dict[int | None, dict[str, list[FieldSpec]]]:
    """The profile's sources per width, with each column as the name it is read under."""
    return {
        width: {
            key: [
                spec.model_copy(
                    update={
                        "column": None if spec.column is None else resolve(key, spec.column),
                        "hash": None if spec.hash is None else [resolve(key, c) for c in spec.hash],
                    }
                )
                for spec in sources
            ]
            for key, sources in mapping.items()
        }
        for width, mapping in profile.mappings().items()
    }


def _header_names(header: bytes, delimiter: str) -> tuple[str, ...]:
    try:
        text = header.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise HeaderError("line 1: the header is not UTF-8 text") from None
    try:
        names = next(csv.reader([text], delimiter=delimiter, strict=True))
    except (csv.Error, StopIteration):
        raise HeaderError("line 1: the header is not a line of column names") from None
    names = [name.strip() for name in names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated or not any(names):
        raise HeaderError(f"line 1: the header names columns more than once ({', '.join(repeated)})")
    return tuple(names)


@dataclass(frozen=True)
class Layout:
    """A feed with its columns known: parses data lines into canonical raw batches.

    ``notes`` gathers what :meth:`parse` noticed over every chunk it read.
    """

    feed: Feed
    columns: tuple[str, ...]
    #: line width (None: any) -> field -> its sources, columns named as read (switch formats)
    picked: dict[int | None, dict[str, list[FieldSpec]]] = field(default_factory=dict)
    notes: FeedNotes = field(default_factory=FeedNotes, compare=False)

    @property
    def first_line(self) -> int:
        """The physical line number of the first data line."""
        return 2 if self.feed.has_header else 1

    def parse(self, data: bytes, first_line: int) -> pl.DataFrame:
        """Data lines (whole) into a canonical raw batch (``schemas.cdr_csv.BATCH_SCHEMA``,
        plus ``caller_origin`` for switch formats): one row per physical line."""
        if first_line == 1 and data.startswith(_BOM) and self.feed.encoding in ("utf-8", "utf-8-sig"):
            # A headerless file saved with a byte order mark: not part of its first field.
            data = data[len(_BOM) :]
        data = to_utf8(data, self.feed.encoding)
        profile = self.feed.profile
        if profile is None:
            return self._noted(parse_chunk(data, first_line=first_line, columns=self.columns))
        if not data:
            return pl.DataFrame(schema={**BATCH_SCHEMA, "caller_origin": pl.String()}).select(
                "line", *CDR_COLUMNS, "caller_origin", "framing"
            )
        if profile.layout == "fixed":
            fields, spans = _fixed_fields(data, first_line, profile)
            picked = {None: {k: [s.model_copy(update={"column": spans[s.slice]}) if s.slice else s for s in v]
                             for k, v in profile.columns.items()}}  # fmt: skip
        else:
            used = {int(c[1:]) - 1 for mapping in self.picked.values() for sources in mapping.values()
                    for spec in sources for c in ([spec.column] if spec.column else (spec.hash or []))}  # fmt: skip
            fields = read_fields(
                data,
                first_line=first_line,
                columns=self.columns,
                separator=profile.delimiter,
                quoted=profile.quoted,
                widths=profile.widths or None,
                used=used,
                lenient=profile.quotes == "lenient",
            )
            picked = self.picked
        skipped = _not_records(data, profile)
        batch, notes = to_canonical(fields, profile, picked, feed=self.feed)
        self.notes.add(notes)
        if skipped is not None:
            batch = batch.with_columns(
                pl.when(pl.Series(skipped)).then(pl.lit(NOT_A_RECORD)).otherwise(pl.col("framing")).alias("framing")
            )
        return self._noted(batch)

    def _noted(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The batch, its lines counted in ``notes`` (those not of the feed's encoding too)."""
        self.notes.lines += batch.height
        self.notes.undecoded_lines += int(batch.get_column("framing").str.starts_with("not UTF-8").sum())
        return batch


def to_utf8(data: bytes, encoding: str) -> bytes:
    """Lines of ``encoding`` as UTF-8 (bytes that are not of it become U+FFFD, judged
    where they stand: ``schemas.cdr_csv.judge_line``). Line ends stay where they were:
    no byte of a GB18030 character is a newline, a quote or a separator."""
    if encoding in ("utf-8", "utf-8-sig") or not data:
        return data
    return data.decode(encoding, errors="replace").encode()


def _not_records(data: bytes, profile: Profile) -> np.ndarray | None:
    """Which lines are no record (comments, blank lines, a fixed-width file's header and
    trailer), when the profile says so; None when every line is one."""
    if profile.comment is None and not profile.skip_blank and profile.records is None:
        return None
    starts, ends = line_bounds(data)
    lines = [data[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    skip = np.zeros(len(lines), dtype=bool)
    for index, line in enumerate(lines):
        text = line.decode("utf-8", errors="replace")
        if profile.skip_blank and not text.strip():
            skip[index] = True
        elif profile.comment is not None and text.lstrip().startswith(profile.comment):
            skip[index] = True
        elif profile.records is not None and not text.startswith(profile.records):
            skip[index] = True
    return skip


def _fixed_fields(data: bytes, first_line: int, profile: Profile) -> tuple[pl.DataFrame, dict[tuple[int, int], str]]:
    """A fixed-width file's lines as columns, one per slice the profile reads."""
    slices = sorted({spec.slice for sources in profile.columns.values() for spec in sources if spec.slice})
    names = {span: f"s{span[0]}_{span[1]}" for span in slices}
    starts, ends = line_bounds(data)
    columns: dict[str, list[str]] = {name: [] for name in names.values()}
    framing: list[str | None] = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        raw = data[start:end]
        problem = None
        if len(raw) > MAX_LINE_BYTES:
            problem = f"line longer than {MAX_LINE_BYTES} bytes ({len(raw)} bytes)"
        elif slices and len(raw) < max(s[1] for s in slices):
            problem = f"line of {len(raw)} bytes; the profile reads up to byte {max(s[1] for s in slices)}"
        for span, name in names.items():
            value = raw[span[0] : span[1]].decode("utf-8", errors="replace")
            if problem is None and ("\ufffd" in value or "\x00" in value):
                problem, _ = judge_line(raw[span[0] : span[1]], {1})
                problem = f"bytes {span[0]}-{span[1]}: {problem or 'not UTF-8'}"
            columns[name].append(value)
        framing.append(problem)
    frame = pl.DataFrame(
        {
            "line": pl.int_range(first_line, first_line + len(framing), eager=True, dtype=pl.Int64),
            **{name: pl.Series(values, dtype=pl.String) for name, values in columns.items()},
            "width": pl.Series([1] * len(framing), dtype=pl.Int32),
            "fields_read": pl.Series([p is None for p in framing], dtype=pl.Boolean),
            "framing": pl.Series(framing, dtype=pl.String),
        }
    )
    return frame, names


# ----------------------------------------------------------------------- the mapping

_ISO_OUT: Final[str] = "%Y-%m-%dT%H:%M:%S%:z"
_ISO_OUT_FRACTION: Final[str] = "%Y-%m-%dT%H:%M:%S%.6f%:z"
#: How far after the uniqueid's epoch a record's start may be and still show the zone
#: (Asterisk writes a record per party of a channel; later ones start a few minutes on).
_EPOCH_SLACK_S: Final[int] = 60
_ZONE_STEP_S: Final[int] = 900


def to_canonical(
    fields: pl.DataFrame,
    profile: Profile,
    picked: dict[int | None, dict[str, list[FieldSpec]]],
    *,
    feed: Feed,
) -> tuple[pl.DataFrame, FeedNotes]:
    """A frame of a switch's fields (``line``, its columns, ``width``, ``fields_read``,
    ``framing``) as a canonical raw batch with ``caller_origin``, and what was noticed."""
    zone = feed.timezone
    names = sorted({name for mapping in picked.values() for name in mapping})
    values = {name: _field_value(name, picked, profile.trim) for name in names}
    if feed.switch_id is not None:
        values["switch_id"] = pl.lit(feed.switch_id)
    elif "switch_id" not in values:
        values["switch_id"] = pl.lit(profile.switch_id or "")
    frame = fields.select(
        "line", "framing", "fields_read", "width", *[expr.alias(f"raw_{name}") for name, expr in values.items()]
    )
    frame = _with_hashes(frame, fields, picked)
    for name in ("billsec", "duration"):
        if f"raw_{name}" in frame.columns:
            frame = frame.with_columns(_seconds(pl.col(f"raw_{name}"), profile.duration_format).alias(f"raw_{name}"))
    problems: list[pl.Expr] = []
    notes = FeedNotes()
    if profile.time_format == ISO_TIMES:
        frame = frame.with_columns(pl.col(f"raw_{name}").alias(name) for name in _TIME_FIELDS)
    else:
        frame, problems, notes = _times(frame, profile, zone)
    if feed.kind == "asterisk":
        notes.local_layout_lines = int(frame.select(((pl.col("width") == 16) & pl.col("framing").is_null()).sum()).item())
    frame = frame.with_columns(
        # A broken line's id is kept when its fields could be read and the id is sound.
        pl.when(pl.col("fields_read") & ~pl.col("raw_cdr_id").str.contains("[\ufffd\x00]"))
        .then(pl.col("raw_cdr_id"))
        .otherwise(pl.lit(""))
        .alias("cdr_id"),
        pl.col("raw_switch_id").alias("switch_id"),
        pl.col("raw_caller").alias("caller"),
        _normalised_called(profile).alias("called"),
        pl.col("raw_answer_number").alias("answer_number"),
        pl.col("raw_billsec").alias("billsec"),
        _disposition(profile.disposition).alias("disposition"),
    )
    if profile.derives_areas:
        frame, area_problems = _placed(frame, profile.default_area)
        problems += area_problems
    else:
        frame = frame.with_columns(
            pl.col("raw_caller_area").alias("caller_area"),
            pl.col("raw_answer_area").alias("answer_area"),
            pl.lit(None, dtype=pl.String).alias("caller_origin"),
        )
    framing = pl.coalesce(pl.col("framing"), *problems) if problems else pl.col("framing")
    batch = frame.with_columns(framing.alias("framing")).select("line", *CDR_COLUMNS, "caller_origin", "framing")
    return batch, notes


def _field_value(name: str, picked: dict[int | None, dict[str, list[FieldSpec]]], trim: bool) -> pl.Expr:
    """A field's text on every row: by the row's width, the first of its sources that is
    not empty (hashes are filled in later, where nothing else gave a value)."""

    def first(sources: list[FieldSpec]) -> pl.Expr:
        found = [_source(spec, trim).replace("", None) for spec in sources if spec.hash is None]
        return pl.coalesce(found).fill_null("") if found else pl.lit("")

    variants = [(width, mapping[name]) for width, mapping in picked.items() if name in mapping]
    if variants and len(variants) == len(picked) and all(sources == variants[0][1] for _, sources in variants):
        return first(variants[0][1])  # the same sources whatever the width
    expr: Any = pl
    for width, sources in variants:
        expr = expr.when(pl.col("width") == width).then(first(sources))
    return pl.lit("") if expr is pl else expr.otherwise(pl.lit(""))


def _source(spec: FieldSpec, trim: bool) -> pl.Expr:
    if spec.value is not None:
        value = pl.lit(spec.value, dtype=pl.String)
    else:
        value = pl.col(str(spec.column)).fill_null("")
        if trim:
            value = value.str.strip_chars(" \t")
            # `, "x"` read as a blank and a quoted field: the value between the quotes.
            value = (
                pl.when(value.str.contains(r'^".*"$'))
                .then(value.str.slice(1, value.str.len_chars() - 2).str.replace_all('""', '"', literal=True))
                .otherwise(value)
            )
    if spec.regex is not None:
        group = 1 if re.compile(spec.regex).groups else 0
        value = value.str.extract(spec.regex, group).fill_null("")
    return value


def _with_hashes(frame: pl.DataFrame, fields: pl.DataFrame, picked: dict[int | None, dict[str, list[FieldSpec]]]) -> pl.DataFrame:
    """Fields that come from a hash of columns, where no earlier source gave them: the
    first 20 hex digits of the SHA-256 of the columns' values, after ``h``. Python's
    hashlib, not polars' hash: the same line must get the same id in every version."""
    for width, mapping in picked.items():
        for name, sources in mapping.items():
            hashed = [spec for spec in sources if spec.hash is not None]
            if not hashed:
                continue
            wanted = pl.col(f"raw_{name}") == ""
            if width is not None:
                wanted = wanted & (pl.col("width") == width)
            rows = frame.select(wanted.alias("wanted")).to_series()
            if not rows.any():
                continue
            columns = [str(c) for c in hashed[0].hash or []]
            texts = fields.filter(rows).select(pl.concat_str([pl.col(c).fill_null("") for c in columns], separator="\x1f"))
            ids = ["h" + hashlib.sha256(text.encode()).hexdigest()[:20] for text in texts.to_series().to_list()]
            frame = frame.with_columns(
                frame.get_column(f"raw_{name}").scatter(rows.arg_true(), pl.Series(ids, dtype=pl.String))
            )
    return frame


def _seconds(raw: pl.Expr, duration_format: str) -> pl.Expr:
    """A duration as whole seconds, as text: ``hms`` from ``H:MM:SS`` or ``HHMMSS``, a
    fraction rounded half up (Asterisk's own rounding of billsec); else as written (the
    canonical check says what is wrong with it)."""
    if duration_format == "hms":
        parts = raw.str.extract_groups(r"^(\d+):([0-5]\d):([0-5]\d)$|^(\d{2})(\d{2})(\d{2})$")
        hours = pl.coalesce(parts.struct.field("1"), parts.struct.field("4")).cast(pl.Int64)
        minutes = pl.coalesce(parts.struct.field("2"), parts.struct.field("5")).cast(pl.Int64)
        seconds = pl.coalesce(parts.struct.field("3"), parts.struct.field("6")).cast(pl.Int64)
        return (hours * 3600 + minutes * 60 + seconds).cast(pl.String).fill_null(raw)
    whole = raw.str.extract(r"^(\d{1,9})\.\d+$", 1).cast(pl.Int64, strict=False)
    up = raw.str.extract(r"^\d{1,9}\.(\d)", 1).cast(pl.Int64, strict=False) >= 5
    return pl.when(whole.is_not_null()).then((whole + up.cast(pl.Int64)).cast(pl.String)).otherwise(raw)


def _times(frame: pl.DataFrame, profile: Profile, zone: str) -> tuple[pl.DataFrame, list[pl.Expr], FeedNotes]:
    """The three times as ISO 8601 with their offset (parsed, derived where the profile
    says), why one cannot be, and the zone the uniqueid shows them written in."""
    epoch = profile.time_format in EPOCH_TIMES
    present = [name for name in _TIME_FIELDS if f"raw_{name}" in frame.columns]
    # A fraction of a second is read only in a chunk that has one (a second parse costs).
    fraction = not epoch and bool(
        frame.select(pl.any_horizontal(pl.col(f"raw_{n}").str.contains(".", literal=True).any() for n in present)).item()
    ) if present else False
    frame = frame.with_columns(
        *[_instant(pl.col(f"raw_{name}"), profile.time_format, None, fraction).alias(f"wall_{name}") for name in present],
        pl.col("raw_billsec").cast(pl.Int64, strict=False).alias("billsec_n") if "raw_billsec" in frame.columns else pl.lit(None, pl.Int64).alias("billsec_n"),
    ).with_columns(
        _zoned(pl.col(f"wall_{name}"), profile.time_format, zone).alias(f"dt_{name}") for name in present
    )
    seconds = pl.duration(seconds=pl.col("billsec_n"))
    derive = profile.derive
    if derive.get("answer_time") == "start_time":
        frame = frame.with_columns(pl.when(pl.col("billsec_n") > 0).then(pl.col("dt_start_time")).alias("dt_answer_time"))
    elif derive.get("answer_time") == "end_time - billsec":
        frame = frame.with_columns(pl.when(pl.col("billsec_n") > 0).then(pl.col("dt_end_time") - seconds).alias("dt_answer_time"))
    if derive.get("start_time") == "answer_time":
        frame = frame.with_columns(pl.coalesce("dt_answer_time", "dt_end_time").alias("dt_start_time"))
    how = derive.get("end_time")
    if how == "answer_time + billsec":
        frame = frame.with_columns((pl.coalesce("dt_answer_time", "dt_start_time") + seconds).alias("dt_end_time"))
    elif how == "start_time + billsec":
        frame = frame.with_columns((pl.col("dt_start_time") + seconds).alias("dt_end_time"))
    elif how == "start_time + duration":
        duration = pl.duration(seconds=pl.col("raw_duration").cast(pl.Int64, strict=False))
        frame = frame.with_columns((pl.col("dt_start_time") + duration).alias("dt_end_time"))
    if derive.get("billsec") == "end_time - answer_time":
        talk = (pl.col("dt_end_time") - pl.col("dt_answer_time")).dt.total_seconds()
        frame = frame.with_columns(
            pl.when(pl.col("dt_answer_time").is_null()).then(pl.lit("0")).otherwise(talk.cast(pl.String)).alias("raw_billsec")
        )
    problems: list[pl.Expr] = []
    outputs = []
    stamps = [f"dt_{name}" for name in _TIME_FIELDS if f"dt_{name}" in frame.columns]
    fractions = bool(frame.select(pl.any_horizontal((pl.col(c).dt.microsecond() != 0).any() for c in stamps)).item()) if stamps else False
    for name in _TIME_FIELDS:
        instant = pl.col(f"dt_{name}")
        text = instant.dt.strftime(_ISO_OUT)
        if fractions:
            text = pl.when(instant.dt.microsecond() != 0).then(instant.dt.strftime(_ISO_OUT_FRACTION)).otherwise(text)
        if name in derive:
            outputs.append(text.fill_null("").alias(name))
            if name != "answer_time":
                problems.append(pl.when(instant.is_null()).then(pl.lit(f"{name} cannot be worked out as {derive[name]}")))
            continue
        raw = pl.col(f"raw_{name}")
        outputs.append(pl.when(raw == "").then(pl.lit("")).otherwise(text).fill_null(raw).alias(name))
        shown = pl.format("{} '{}'", pl.lit(name), raw.str.slice(0, 40))
        form = "seconds since 1970" if profile.time_format == "epoch" else (
            "milliseconds since 1970" if profile.time_format == "epoch_ms" else f"a time in the form {profile.time_format}"
        )
        wall = pl.col(f"wall_{name}")
        problem = (
            pl.when((raw == "") & (pl.lit(name) != "answer_time"))
            .then(pl.lit(f"{name} is empty"))
            .when((raw != "") & wall.is_null())
            .then(pl.format("{} is not {}", shown, pl.lit(form)))
        )
        if not epoch:
            problem = problem.when((raw != "") & instant.is_null()).then(
                pl.format("{} does not exist in {} (a daylight-saving gap)", shown, pl.lit(zone))
            )
        problems.append(problem)
    frame = frame.with_columns(outputs)
    notes = FeedNotes()
    if "raw_start_epoch" in frame.columns and "wall_start_time" in frame.columns and profile.wall_clock:
        wall = pl.col("wall_start_time")
        local = pl.col("dt_start_time")
        written = ((wall.dt.epoch("s") - pl.col("raw_start_epoch").cast(pl.Int64, strict=False) + _EPOCH_SLACK_S) // _ZONE_STEP_S) * _ZONE_STEP_S
        read = (local.dt.base_utc_offset() + local.dt.dst_offset()).dt.total_seconds()
        seen = (
            frame.select(written.alias("written"), read.cast(pl.Int64).alias("read"), pl.col("framing"))
            .filter(pl.col("framing").is_null() & pl.col("written").is_not_null() & pl.col("read").is_not_null())
            .filter(pl.col("written").abs() <= 14 * 3600)
            .group_by("written", "read")
            .len()
        )
        notes.zones.update({(w, r): n for w, r, n in seen.iter_rows()})
    return frame, problems, notes


def _instant(raw: pl.Expr, time_format: str, zone: str | None, fraction: bool = True) -> pl.Expr:
    """The instant of a time as written (in ``zone``; None: naive wall clock); ``fraction``:
    a fraction of a second may follow the seconds."""
    if time_format in EPOCH_TIMES:
        digits = raw.str.extract_groups(r"^(\d{1,13})(?:\.(\d{1,9}))?$")
        whole = digits.struct.field("1").cast(pl.Int64, strict=False)
        micros = digits.struct.field("2").str.slice(0, 6).str.pad_end(6, "0").cast(pl.Int64, strict=False).fill_null(0)
        unit = "ms" if time_format == "epoch_ms" else "s"
        instant = pl.from_epoch(whole, time_unit=unit).cast(pl.Datetime("us")) + pl.duration(
            microseconds=micros if unit == "s" else pl.lit(0)
        )
        return _zoned(instant, time_format, zone) if zone is not None else instant
    form = time_format + "%.f" if fraction and "%f" not in time_format and time_format.endswith("%S") else time_format
    wall = raw.str.strptime(pl.Datetime("us"), form, strict=False)
    return wall if zone is None else _zoned(wall, time_format, zone)


def _zoned(wall: pl.Expr, time_format: str, zone: str) -> pl.Expr:
    """A naive time of the format as an instant: epoch times are UTC, wall clocks the zone's."""
    if time_format in EPOCH_TIMES:
        return wall.dt.replace_time_zone("UTC")
    return wall.dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")


def _normalised_called(profile: Profile) -> pl.Expr:
    from schemas.numbering import normalise_called

    return normalise_called(pl.col("raw_called"), tuple(profile.called_prefixes))


def _disposition(mapping: DispositionMap) -> pl.Expr:
    raw = pl.col("raw_disposition")
    if not mapping.rules and mapping.otherwise is None:
        return raw
    seconds = pl.col("raw_billsec").cast(pl.Int64, strict=False)
    expr: Any = pl
    for rule in mapping.rules:
        condition = pl.lit(True) if rule.values is None else raw.is_in(rule.values)
        if rule.billsec == "positive":
            condition = condition & (seconds > 0).fill_null(False)
        elif rule.billsec == "zero":
            condition = condition & (seconds == 0).fill_null(False)
        expr = expr.when(condition).then(pl.lit(rule.to))
    fallback = raw if mapping.otherwise is None else pl.lit(mapping.otherwise)
    return fallback if expr is pl else expr.otherwise(fallback)


def _placed(frame: pl.DataFrame, default_area: str | None) -> tuple[pl.DataFrame, list[pl.Expr]]:
    """Both sides of each call placed from the numbers (schemas.numbering.place_numbers).

    An answering side that cannot be placed makes only a call that would be billed
    malformed (answered, billsec > 0), and that is judged after the called number
    (``ANSWER_PROBLEM``): an unanswered call, or a call to no account, is not rejected
    for it.
    """
    # Imported here: the numbering plan (phonenumbers) is for switch formats only, and a
    # canonical `cdrflow rate` starts ~12 ms sooner without it.
    from schemas.numbering import place_numbers

    placed = place_numbers(frame.get_column("caller"), frame.get_column("answer_number"), default_area)
    frame = frame.with_columns(placed.get_columns())
    billed = (pl.col("disposition") == "ANSWERED") & (pl.col("billsec").cast(pl.Int64, strict=False) > 0).fill_null(False)
    return frame, [pl.when(billed & pl.col("answer_problem").is_not_null()).then(pl.format(ANSWER_PROBLEM + "{}", pl.col("answer_problem")))]


def example_profiles() -> Sequence[Path]:
    """The profiles shipped with cdrflow."""
    return sorted(PROFILES_DIR.glob("*.toml"))
