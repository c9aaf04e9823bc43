"""What switches write, turned into canonical CDR batches (spec/rating.md 2.3) at framing.

Three formats (``--format``):

- ``canonical``: the canonical CSV itself (:mod:`schemas.cdr_csv`);
- ``asterisk``: Asterisk cdr_csv's ``Master.csv`` written with ``loguniqueid=yes`` and
  ``loguserfield=yes``: no header, 18 quoted columns (:data:`ASTERISK_COLUMNS`), times
  ``YYYY-MM-DD HH:MM:SS`` in the switch's timezone, ``answer`` empty when unanswered;
  ``cdr_id`` = uniqueid, ``caller`` = src, ``called`` = dst, ``answer_number`` =
  userfield (where 400 platforms record the number the call was forwarded to);
- ``mapped``: any other delimited format, described by a :class:`Profile` (a TOML file,
  see ``schemas/profiles/`` and docs/formats.md). Asterisk is such a profile, built in.

Every format becomes the same raw batch: ``line`` (physical line of the file, the first
line is 1), the 12 canonical columns as text and ``framing`` (why a line cannot be read,
or null). Times are rewritten as ISO 8601 with the switch's offset, dispositions mapped,
and, when the format has no area columns, ``caller_area`` / ``answer_area`` derived from
the numbers (:mod:`schemas.numbering`); a number without an area makes its line
``malformed`` with the reason. Everything is done on whole columns. Pure: bytes in, frames
out (reading a profile file is :func:`load_profile`'s one read).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
import rtoml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.cdr_csv import BATCH_SCHEMA, HeaderError, parse_chunk, read_fields, read_header
from schemas.columns import CDR_COLUMNS, DISPOSITIONS

FORMATS: Final[tuple[str, ...]] = ("canonical", "asterisk", "mapped")
DEFAULT_SWITCH_TIMEZONE: Final[str] = "Asia/Shanghai"
#: Where the example profiles are shipped.
PROFILES_DIR: Final[Path] = Path(__file__).parent / "profiles"

#: Asterisk cdr_csv Master.csv with loguniqueid=yes and loguserfield=yes, in file order.
ASTERISK_COLUMNS: Final[tuple[str, ...]] = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp", "lastdata",
    "start", "answer", "end", "duration", "billsec", "disposition", "amaflags", "uniqueid", "userfield",
)  # fmt: skip
#: The format Asterisk writes times in (local time of the switch, no offset).
ASTERISK_TIME_FORMAT: Final[str] = "%Y-%m-%d %H:%M:%S"
#: ``time_format`` value for times that carry their offset (as the canonical format's).
ISO_TIMES: Final[str] = "iso8601"

_REQUIRED_FIELDS: Final[tuple[str, ...]] = tuple(
    c for c in CDR_COLUMNS if c not in ("switch_id", "caller_area", "answer_area")
)
_TIME_FIELDS: Final[tuple[str, ...]] = ("start_time", "answer_time", "end_time")

CanonicalField = Literal[
    "cdr_id", "switch_id", "caller", "called", "answer_number", "caller_area", "answer_area",
    "start_time", "answer_time", "end_time", "billsec", "disposition",
]  # fmt: skip
Disposition = Literal["ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION"]


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the key."""


#: The profile models' validators are built when a profile is first read, not at import:
#: a canonical `cdrflow rate` reads none, and starts ~10 ms sooner.
_PROFILE_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class FieldSpec(BaseModel):
    """Where a canonical field comes from: a column (name, or position from 1) and an
    optional regex whose first group (or whole match) is taken."""

    model_config = _PROFILE_MODEL_CONFIG

    column: str | int
    regex: str | None = None

    @field_validator("column", mode="before")
    @classmethod
    def _named(cls, value: Any) -> str | int:
        if isinstance(value, bool) or not (
            (isinstance(value, str) and value.strip()) or (isinstance(value, int) and value >= 1)
        ):
            raise ValueError(f"a column is a name or a position from 1, got {value!r}")
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


class DispositionRule(BaseModel):
    """Switch values that become one canonical disposition, optionally only for some billsec."""

    model_config = _PROFILE_MODEL_CONFIG

    values: Annotated[list[str], Field(min_length=1)]
    to: Disposition
    billsec: Literal["positive", "zero"] | None = None


class DispositionMap(BaseModel):
    """Rules tried in order; ``otherwise`` for a value no rule takes (unset: kept as it is)."""

    model_config = _PROFILE_MODEL_CONFIG

    rules: list[DispositionRule] = []
    otherwise: Disposition | None = None


class Profile(BaseModel):
    """A declarative description of one switch's CSV format (docs/formats.md)."""

    model_config = _PROFILE_MODEL_CONFIG

    name: str
    header: bool = True
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    #: Fields may be quoted ("..."), as most switches write them.
    quoted: bool = True
    #: Columns of a line; required without a header (a line with another count is malformed).
    columns_per_line: Annotated[int, Field(ge=1)] | None = None
    time_format: str = ASTERISK_TIME_FORMAT
    #: IANA zone of the switch's wall-clock times; unset: --switch-timezone.
    timezone: str | None = None
    #: The switch id of every line, when no column holds one (--switch-id overrides it).
    switch_id: str | None = None
    columns: dict[CanonicalField, FieldSpec]
    disposition: DispositionMap = DispositionMap()

    @field_validator("columns", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `caller = "src"` or `caller = 2` is short for `caller = { column = ... }`.
        if isinstance(value, dict):
            return {k: {"column": v} if isinstance(v, (str, int)) else v for k, v in value.items()}
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            check_timezone(value)
        return value

    @field_validator("time_format")
    @classmethod
    def _time_format(cls, value: str) -> str:
        if value != ISO_TIMES and not all(code in value for code in ("%Y", "%m", "%d", "%H", "%M")):
            raise ValueError(f"must be {ISO_TIMES!r} or a strftime format with %Y, %m, %d, %H and %M")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Profile:
        missing = [name for name in _REQUIRED_FIELDS if name not in self.columns]
        if missing:
            raise ValueError(f"columns: missing {', '.join(missing)} (each canonical field needs a column)")
        if ("caller_area" in self.columns) != ("answer_area" in self.columns):
            raise ValueError("columns: give both caller_area and answer_area, or neither (then they are derived)")
        if not self.header:
            if self.columns_per_line is None:
                raise ValueError("columns_per_line is required when header = false")
            for name, spec in self.columns.items():
                if isinstance(spec.column, str):
                    raise ValueError(f"columns.{name}: without a header, a column is a position (1, 2, ...)")
                if spec.column > self.columns_per_line:
                    raise ValueError(f"columns.{name}: column {spec.column} > columns_per_line {self.columns_per_line}")
        return self

    @property
    def derives_areas(self) -> bool:
        return "caller_area" not in self.columns


def check_timezone(name: str) -> ZoneInfo:
    """The zone of an IANA name, or ValueError saying it is not one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA timezone name (e.g. Asia/Shanghai)") from None


def asterisk_profile() -> Profile:
    """Asterisk cdr_csv Master.csv (loguniqueid=yes, loguserfield=yes) as a profile."""
    position = {name: i + 1 for i, name in enumerate(ASTERISK_COLUMNS)}
    return Profile(
        name="asterisk",
        header=False,
        columns_per_line=len(ASTERISK_COLUMNS),
        time_format=ASTERISK_TIME_FORMAT,
        columns={
            "cdr_id": FieldSpec(column=position["uniqueid"]),
            "caller": FieldSpec(column=position["src"]),
            "called": FieldSpec(column=position["dst"]),
            "answer_number": FieldSpec(column=position["userfield"]),
            "start_time": FieldSpec(column=position["start"]),
            "answer_time": FieldSpec(column=position["answer"]),
            "end_time": FieldSpec(column=position["end"]),
            "billsec": FieldSpec(column=position["billsec"]),
            "disposition": FieldSpec(column=position["disposition"]),
        },
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
            key = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-after"))
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            elif error["type"] == "missing":
                message = "required key missing"
            problems.append(f"key {key or '(top level)'}: {message}")
        raise ProfileError(f"{path}: " + "; ".join(dict.fromkeys(problems))) from None


# ----------------------------------------------------------------------------- feeds


@dataclass(frozen=True)
class Feed:
    """How to read the files of one run: the format, its profile, the switch's zone and id.

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
    ) -> Feed:
        """The feed of ``--format``, ``--profile``, ``--switch-timezone``, ``--switch-id``.

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
        return cls(kind=kind, profile=loaded, timezone=zone, switch_id=switch_id)

    def describe(self) -> str:
        if self.profile is None:
            return "canonical"
        name = self.kind if self.kind == "asterisk" else f"mapped profile {self.profile.name}"
        times = "" if self.profile.time_format == ISO_TIMES else f"times in {self.timezone}"
        parts = [p for p in (times, f"switch {self.switch_id}" if self.switch_id else "") if p]
        return name + (f" ({', '.join(parts)})" if parts else "")

    @property
    def has_header(self) -> bool:
        return self.profile is None or self.profile.header

    def layout(self, header: bytes | None) -> Layout:
        """How to parse this feed's data lines, from its header line (None: headerless).

        :class:`schemas.cdr_csv.HeaderError` says what is wrong with the header.
        """
        if self.profile is None:
            assert header is not None
            return Layout(self, read_header(header), {})
        profile = self.profile
        if not profile.header:
            assert profile.columns_per_line is not None
            names = tuple(f"c{i}" for i in range(1, profile.columns_per_line + 1))
            return Layout(self, names, {k: f"c{v.column}" for k, v in profile.columns.items()})
        assert header is not None
        names = _header_names(header, profile.delimiter)
        # Columns are read under their positions (c1, c2, ...): a switch's own names may
        # be anything, "line" and "framing" included.
        picked: dict[str, str] = {}
        for key, spec in profile.columns.items():
            if isinstance(spec.column, int):
                if spec.column > len(names):
                    raise HeaderError(
                        f"line 1: the header has {len(names)} columns; profile key columns.{key} "
                        f"asks for column {spec.column}"
                    )
                picked[key] = f"c{spec.column}"
            elif spec.column not in names:
                raise HeaderError(f"line 1: the header has no column {spec.column!r} (profile key columns.{key})")
            else:
                picked[key] = f"c{names.index(spec.column) + 1}"
        return Layout(self, tuple(f"c{i}" for i in range(1, len(names) + 1)), picked)


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
    """A feed with its columns known: parses data lines into canonical raw batches."""

    feed: Feed
    columns: tuple[str, ...]
    #: canonical field -> column name (switch formats only)
    picked: dict[str, str] = field(default_factory=dict)

    @property
    def first_line(self) -> int:
        """The physical line number of the first data line."""
        return 2 if self.feed.has_header else 1

    def parse(self, data: bytes, first_line: int) -> pl.DataFrame:
        """Data lines (whole) into a canonical raw batch (``schemas.cdr_csv.BATCH_SCHEMA``)."""
        profile = self.feed.profile
        if profile is None:
            return parse_chunk(data, first_line=first_line, columns=self.columns)
        if not data:
            return pl.DataFrame(schema=BATCH_SCHEMA)
        fields = read_fields(
            data, first_line=first_line, columns=self.columns, separator=profile.delimiter, quoted=profile.quoted
        )
        return to_canonical(fields, profile, self.picked, timezone=self.feed.timezone, switch_id=self.feed.switch_id)


# ----------------------------------------------------------------------- the mapping


def to_canonical(
    fields: pl.DataFrame,
    profile: Profile,
    picked: dict[str, str],
    *,
    timezone: str,
    switch_id: str | None,
) -> pl.DataFrame:
    """A frame of a switch's fields (``line``, its columns, ``framing``) as a canonical raw batch."""
    zone = timezone
    values: dict[str, pl.Expr] = {}
    for name, spec in profile.columns.items():
        value = pl.col(picked[name]).fill_null("")
        if spec.regex is not None:
            group = 1 if re.compile(spec.regex).groups else 0
            value = value.str.extract(spec.regex, group).fill_null("")
        values[name] = value
    if switch_id is not None:
        values["switch_id"] = pl.lit(switch_id)
    elif "switch_id" not in values:
        values["switch_id"] = pl.lit(profile.switch_id or "")
    # A line of the wrong width was read field by field, so its cdr_id is where it should
    # be; in any other broken line (bad quotes, bytes) no field is trusted.
    readable = pl.col("framing").is_null() | pl.col("framing").str.starts_with("wrong number of columns")
    values["cdr_id"] = pl.when(readable).then(values["cdr_id"]).otherwise(pl.lit(""))
    frame = fields.select(
        "line",
        "framing",
        *[expr.alias(f"raw_{name}") for name, expr in values.items()],
    )
    problems: list[pl.Expr] = []
    if profile.time_format == ISO_TIMES:
        times = [pl.col(f"raw_{name}").alias(name) for name in _TIME_FIELDS]
    else:
        times, problems = _local_times(profile.time_format, zone)
    frame = frame.with_columns(
        *times,
        pl.col("raw_cdr_id").alias("cdr_id"),
        pl.col("raw_switch_id").alias("switch_id"),
        pl.col("raw_caller").alias("caller"),
        pl.col("raw_called").alias("called"),
        pl.col("raw_answer_number").alias("answer_number"),
        pl.col("raw_billsec").alias("billsec"),
        _disposition(profile.disposition).alias("disposition"),
    )
    if profile.derives_areas:
        frame, area_problems = _derived_areas(frame)
        problems += area_problems
    else:
        frame = frame.with_columns(
            pl.col("raw_caller_area").alias("caller_area"), pl.col("raw_answer_area").alias("answer_area")
        )
    framing = pl.coalesce(pl.col("framing"), *problems) if problems else pl.col("framing")
    return frame.with_columns(framing.alias("framing")).select("line", *CDR_COLUMNS, "framing")


def _local_times(time_format: str, zone: str) -> tuple[list[pl.Expr], list[pl.Expr]]:
    """Wall-clock times of the switch as ISO 8601 with their offset, and why one cannot be."""
    out = "%Y-%m-%dT%H:%M:%S" + ("%.6f" if "%f" in time_format else "") + "%:z"
    times, problems = [], []
    for name in _TIME_FIELDS:
        raw = pl.col(f"raw_{name}")
        wall = raw.str.strptime(pl.Datetime("us"), time_format, strict=False)
        local = wall.dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")
        times.append(pl.when(raw == "").then(pl.lit("")).otherwise(local.dt.strftime(out)).fill_null(raw).alias(name))
        shown = pl.format("{} '{}'", pl.lit(name), raw.str.slice(0, 40))
        problem = (
            pl.when((raw == "") & (pl.lit(name) != "answer_time"))
            .then(pl.lit(f"{name} is empty"))
            .when((raw != "") & wall.is_null())
            .then(pl.format("{} is not a time in the form {}", shown, pl.lit(time_format)))
            .when((raw != "") & local.is_null())
            .then(pl.format("{} does not exist in {} (a daylight-saving gap)", shown, pl.lit(zone)))
        )
        problems.append(problem)
    return times, problems


def _disposition(mapping: DispositionMap) -> pl.Expr:
    raw = pl.col("raw_disposition")
    if not mapping.rules and mapping.otherwise is None:
        return raw
    seconds = pl.col("raw_billsec").cast(pl.Int64, strict=False)
    expr: Any = pl
    for rule in mapping.rules:
        condition = raw.is_in(rule.values)
        if rule.billsec == "positive":
            condition = condition & (seconds > 0).fill_null(False)
        elif rule.billsec == "zero":
            condition = condition & (seconds == 0).fill_null(False)
        expr = expr.when(condition).then(pl.lit(rule.to))
    fallback = raw if mapping.otherwise is None else pl.lit(mapping.otherwise)
    return fallback if expr is pl else expr.otherwise(fallback)


def _derived_areas(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[pl.Expr]]:
    """Areas from the numbers; an unanswered call with no answer number gets an empty one."""
    # Imported here: the numbering plan (phonenumbers) is for switch formats only, and a
    # canonical `cdrflow rate` starts ~12 ms sooner without it.
    from schemas.numbering import derive_areas

    callers = derive_areas(frame.get_column("caller"))
    answers = derive_areas(frame.get_column("answer_number"))
    frame = frame.with_columns(
        caller_area=callers.get_column("area").fill_null(""),
        answer_area=answers.get_column("area").fill_null(""),
        caller_problem=callers.get_column("problem"),
        answer_problem=answers.get_column("problem"),
    )
    unanswered_without_number = (pl.col("answer_number") == "") & (pl.col("disposition") != "ANSWERED")
    return frame, [
        pl.format("caller {}", pl.col("caller_problem")),
        pl.when(~unanswered_without_number).then(pl.format("answer_number {}", pl.col("answer_problem"))),
    ]


def example_profiles() -> Sequence[Path]:
    """The profiles shipped with cdrflow."""
    return sorted(PROFILES_DIR.glob("*.toml"))
