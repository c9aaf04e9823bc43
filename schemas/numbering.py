"""Area codes from telephone numbers: the class of a call when a switch writes no areas.

Pure (numbers in, areas out; the two data sets are read from the installed packages,
not from the network). What a number gives (docs/rules.md, "Areas from numbers"):

- a national fixed line carries its area code: ``01062345678`` -> ``010``,
  ``075512345678`` -> ``0755``. Which digits are the area code, and whether the number
  is a fixed line at all, come from Google's numbering plan (``phonenumbers``);
- a mobile number (``1[3-9]`` and 9 digits) gets the area code of its number segment
  (号段: its first 7 digits), from the segment database of the ``phone`` package;
- ``+86`` / ``0086`` in front of either is the national number; ``0`` in front of a
  mobile (how a mobile calling from another area often arrives) is the mobile;
- a number with another country code (``+`` or ``00`` then the code) gives
  ``+<country code>``: an international caller (spec 2.3);
- anything else (a local number without its area code, a 400 or 800 number, a short
  service code, letters, an empty or withheld caller id) has no area: the CDR is rejected
  ``malformed`` with the reason :func:`derive_areas` gives.

:func:`derive_areas` works on whole columns: the rules are polars expressions, the
segment database is one join on 7-digit prefixes, and phonenumbers is asked once per
(4-digit prefix, length) of the fixed lines, not once per number.
"""

from __future__ import annotations

import functools
import re
from typing import Final

import numpy as np
import phonenumbers
import polars as pl
from phone import Phone

#: E.164: at most 15 digits, country code included.
_E164_MAX_DIGITS: Final[int] = 15
#: Fewest digits after a foreign country code that can still be a subscriber's number.
_FOREIGN_MIN_NATIONAL_DIGITS: Final[int] = 4
_CHINA: Final[str] = "86"
_SEPARATORS: Final[str] = r"[\s\-().]"


class AreaError(ValueError):
    """A number whose area cannot be derived; the message says why."""


def area_of(number: str) -> str:
    """The area code of one number, or :class:`AreaError` saying why it has none.

    Examples
    --------
    >>> area_of("01062345678"), area_of("075512345678"), area_of("+8613800138000")
    ('010', '0755', '010')
    >>> area_of("+14155550123")
    '+1'
    >>> area_of("62345678")
    Traceback (most recent call last):
    ...
    schemas.numbering.AreaError: '62345678' is not a number with an area code: a local number without its area code?
    """
    areas = derive_areas(pl.Series([number], dtype=pl.String))
    area, problem = areas.row(0)
    if problem is not None:
        raise AreaError(problem if problem.startswith("'") else f"the number {problem}")
    return area


def derive_areas(numbers: pl.Series) -> pl.DataFrame:
    """Columns ``area`` and ``problem`` for each number, in order (one of them null).

    Each distinct number is worked out once.
    """
    frame = pl.DataFrame({"number": numbers.cast(pl.String)})
    distinct = frame.unique("number", maintain_order=True)
    worked = _work_out(distinct)
    return frame.join(worked, on="number", how="left", nulls_equal=True, maintain_order="left").select(
        "area", "problem"
    )


def _work_out(distinct: pl.DataFrame) -> pl.DataFrame:
    raw = pl.col("number").fill_null("")
    digits = raw.str.replace_all(_SEPARATORS, "")
    frame = distinct.with_columns(digits.alias("digits")).with_columns(
        # "+86..." / "0086...": the national significant number; "+..."/"00..." abroad.
        pl.when(pl.col("digits").str.contains(r"^(?:\+|00)86\d"))
        .then(pl.col("digits").str.replace(r"^(?:\+|00)86", ""))
        # "86..." without + or 00, when what follows is a whole national number: a mobile,
        # or a fixed line's area code (no trunk 0) and subscriber number (9-11 digits).
        .when(
            pl.col("digits").str.contains(r"^861[3-9]\d{9}$")
            | pl.col("digits").str.slice(2).str.contains(f"^(?:{_cn_fixed_line_pattern()})$")
            & pl.col("digits").str.contains(r"^86[1-9]\d{8,10}$")
        )
        .then(pl.col("digits").str.slice(2))
        .when(pl.col("digits").str.contains(r"^0[1-9]\d*$"))
        .then(pl.col("digits").str.slice(1))
        .when(pl.col("digits").str.contains(r"^1\d{10}$"))
        .then(pl.col("digits"))
        .alias("national"),
    )
    national = pl.col("national")
    mobile = national.str.contains(r"^1[3-9]\d{9}$")
    frame = frame.with_columns(
        pl.when(mobile).then(national.str.slice(0, 7)).alias("segment"),
        pl.when(national.is_not_null() & ~mobile).then(national).alias("fixed"),
    )
    # Only the segments asked for: a join with the whole database (~500k rows) cost ~30 ms
    # a call however few the numbers (a tail's batch of a few lines, every 0.1 s), and
    # filtering first is also faster on big batches (200k numbers: 75 -> 49 ms).
    asked = frame.get_column("segment").drop_nulls().unique()
    segments = (
        _segment_areas()
        .filter(pl.col("segment").is_in(asked.implode()))
        .select("segment", pl.col("area_code").alias("mobile_area"))
    )
    frame = frame.join(segments, on="segment", how="left", maintain_order="left")
    frame = frame.with_columns(
        pl.col("fixed").str.contains(f"^(?:{_cn_fixed_line_pattern()})$").fill_null(False).alias("fixed_valid"),
    )
    lengths = _area_code_lengths(frame.filter(pl.col("fixed_valid")).get_column("fixed"))
    code_length = pl.format("{}:{}", pl.col("fixed").str.slice(0, 4), pl.col("fixed").str.len_chars()).replace_strict(
        lengths, default=None, return_dtype=pl.Int64
    )
    frame = frame.with_columns(
        pl.when(pl.col("mobile_area").is_not_null())
        .then(pl.col("mobile_area"))
        .when(pl.col("fixed_valid"))
        .then(pl.concat_str(pl.lit("0"), pl.col("fixed").str.slice(0, code_length)))
        .alias("area")
    )
    found = frame.filter(pl.col("area").is_not_null()).select("number", "area", pl.lit(None, pl.String).alias("problem"))
    # The rest is abroad, or has no area: worked out on those few rows only.
    rest = frame.filter(pl.col("area").is_null()).with_columns(
        pl.when(pl.col("digits").str.contains(r"^(?:\+|00)[1-9]\d*$") & pl.col("national").is_null())
        .then(pl.col("digits").str.replace(r"^(?:\+|00)", ""))
        .alias("foreign"),
    )
    rest = rest.with_columns(_country_code(pl.col("foreign")).alias("country_code"))
    foreign_ok = (
        pl.col("country_code").is_not_null()
        & (pl.col("foreign").str.len_chars() <= _E164_MAX_DIGITS)
        & (pl.col("foreign").str.len_chars() - pl.col("country_code").str.len_chars() >= _FOREIGN_MIN_NATIONAL_DIGITS)
    )
    shown = pl.format("'{}'", raw.str.slice(0, 40))
    problem = (
        pl.when(raw == "")
        .then(pl.lit("is empty (withheld or not recorded)"))
        .when(pl.col("segment").is_not_null())
        .then(pl.format("mobile {}: its segment {} is not in the segment database", shown, pl.col("segment")))
        .when(pl.col("fixed").is_not_null())
        .then(pl.format("{} is not a Chinese fixed-line number with a valid area code", shown))
        .when(pl.col("foreign").is_not_null() & pl.col("country_code").is_null())
        .then(pl.format("{} starts with no known country code", shown))
        .when(pl.col("foreign").is_not_null())
        .then(pl.format("{} is too short or too long for an international number", shown))
        .when(pl.col("digits").str.contains(r"^\d{5,8}$"))
        .then(pl.format("{} is not a number with an area code: a local number without its area code?", shown))
        .otherwise(pl.format("{} is not a telephone number with an area", shown))
    )
    abroad = rest.select(
        "number",
        pl.when(foreign_ok).then(pl.concat_str(pl.lit("+"), pl.col("country_code"))).alias("area"),
        pl.when(~foreign_ok).then(problem).alias("problem"),
    )
    return pl.concat([found, abroad])


def _country_code(foreign: pl.Expr) -> pl.Expr:
    """The 1-3 digit country code a number starts with (ITU codes are prefix-free)."""
    codes = [str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE if code != int(_CHINA)]
    first = [pl.when(foreign.str.slice(0, n).is_in(codes)).then(foreign.str.slice(0, n)) for n in (1, 2, 3)]
    return pl.coalesce(first)


@functools.cache
def _cn_fixed_line_pattern() -> str:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region("CN")
    assert metadata is not None and metadata.fixed_line is not None
    return metadata.fixed_line.national_number_pattern


#: (first 4 digits, length) of a national fixed-line number -> digits of its area code
#: (without the trunk 0). phonenumbers picks the area code by the number's leading digits
#: and length, so one valid number of each pair answers for all of them.
_CODE_LENGTHS: dict[tuple[str, int], int] = {}


def _area_code_lengths(fixed: pl.Series) -> dict[str, int]:
    keyed = (
        pl.DataFrame({"fixed": fixed})
        .with_columns(prefix=pl.col("fixed").str.slice(0, 4), size=pl.col("fixed").str.len_chars())
        .unique(["prefix", "size"], keep="first", maintain_order=True)
    )
    for prefix, size, number in keyed.select("prefix", "size", "fixed").iter_rows():
        key = (prefix, size)
        if key not in _CODE_LENGTHS:
            parsed = phonenumbers.parse("+86" + number)
            _CODE_LENGTHS[key] = phonenumbers.length_of_geographical_area_code(parsed)
    return {f"{prefix}:{size}": length for (prefix, size), length in _CODE_LENGTHS.items() if length > 0}


@functools.cache
def _segment_areas() -> pl.DataFrame:
    """The ``phone`` package's segment database as a frame: segment, area_code, city, province.

    Its ``phone.dat`` is a record block (``province|city|zip|area_code`` strings) followed
    by fixed-size rows (7-digit segment, record offset, carrier); read whole with numpy.
    """
    data = Phone()
    rows = np.frombuffer(
        data.buf,
        dtype=np.dtype([("segment", "<i4"), ("record", "<i4"), ("carrier", "u1")]),
        offset=data.first_phone_record_offset,
    )
    offsets = np.unique(rows["record"])
    records = {}
    for offset in offsets.tolist():
        end = data.buf.find(b"\x00", offset)
        records[offset] = data.buf[offset:end].decode("utf-8").split("|")
    table = pl.DataFrame(
        {
            "record": offsets,
            "province": [records[o][0] for o in offsets.tolist()],
            "city": [records[o][1] for o in offsets.tolist()],
            "area_code": [records[o][3] for o in offsets.tolist()],
        }
    )
    return (
        pl.DataFrame({"segment": rows["segment"], "record": rows["record"]})
        .with_columns(pl.col("segment").cast(pl.String))
        .join(table, on="record", how="left", maintain_order="left")
        .drop("record")
    )


@functools.cache
def area_table() -> pl.DataFrame:
    """Every domestic area code with its city and province (Chinese names): ``area_code, city, province``.

    Where several cities share a code (``028``: 成都, 眉山, 资阳) the one with the most
    number segments is named: the main city of that area.
    """
    return (
        _segment_areas()
        .group_by("area_code", "city", "province")
        .len()
        .sort(["area_code", "len", "city"], descending=[False, True, False])
        .unique("area_code", keep="first", maintain_order=True)
        .select("area_code", "city", "province")
    )


def mobile_segments(area_code: str) -> np.ndarray:
    """The 7-digit mobile segments of an area code (int64, sorted): for test data."""
    segments = _segment_areas().filter(pl.col("area_code") == area_code).get_column("segment")
    return np.sort(segments.cast(pl.Int64).to_numpy())


def is_area_code(code: str) -> bool:
    """Whether ``code`` is in the form :func:`derive_areas` gives (``0`` + digits, or ``+`` + digits)."""
    return re.fullmatch(r"0[1-9]\d{1,3}|\+[1-9]\d{0,2}", code) is not None


#: Caller ids a switch writes when the caller withheld the number (or it was not sent).
WITHHELD_CALLERS: Final[tuple[str, ...]] = (
    "anonymous", "unknown", "private", "restricted", "withheld", "unavailable", "blocked", "privacy",
)  # fmt: skip
#: How a caller was placed (docs/rules.md, "Callers without an area"): by the area its
#: number carries, as a number of the answering side's city, or not at all.
CALLER_ORIGINS: Final[tuple[str, ...]] = ("area", "same_city", "unknown")
#: A number of the city it is dialled in, without its area code: 7 or 8 digits, not
#: starting with 0 (a trunk prefix) or 1 (mobiles, service codes).
_SAME_CITY = r"^[2-9]\d{6,7}$"


def place_numbers(callers: pl.Series, answers: pl.Series, default_area: str | None = None) -> pl.DataFrame:
    """Where the two sides of each call are: ``caller_area, caller_origin, answer_area,
    answer_problem`` (docs/rules.md, "Callers without an area").

    - The answering side: the area its number carries; else ``default_area`` (the city a
      platform's own numbers are in: a number without its area code, or a format that
      does not record the answering number); else empty, and ``answer_problem`` says why.
    - The caller: the area its number carries (``area``); a number of 7-8 digits without
      area code is of the answering side's city (``same_city``; ``default_area`` when
      the answering side has none); anything else (withheld, masked ``1862831****``, an
      extension, a service code, letters) has no area: ``unknown``, an empty area, rated
      by its plan's ``unknown_caller_class``.

    Examples
    --------
    >>> placed = place_numbers(pl.Series(["13800138000", "62345678", "anonymous", "1862831****"]),
    ...                        pl.Series(["02161234567"] * 4))
    >>> placed.select("caller_area", "caller_origin", "answer_area").rows()
    [('010', 'area', '021'), ('021', 'same_city', '021'), ('', 'unknown', '021'), ('', 'unknown', '021')]
    """
    answered = derive_areas(answers)
    fallback = pl.lit(default_area, dtype=pl.String)
    frame = pl.DataFrame({"caller": callers.cast(pl.String), "answer_number": answers.cast(pl.String)}).with_columns(
        answer_area=pl.coalesce(answered.get_column("area"), fallback),
        answer_problem=pl.when(answered.get_column("area").is_null() & fallback.is_null()).then(
            pl.when(answers.fill_null("") == "")
            .then(pl.lit("is empty: no answering number is recorded, and no default_area places the answering side"))
            .otherwise(answered.get_column("problem"))
        ),
    )
    placed = derive_areas(callers)
    digits = frame.get_column("caller").fill_null("").str.replace_all(_SEPARATORS, "")
    same_city = placed.get_column("area").is_null() & digits.str.contains(_SAME_CITY)
    home = pl.coalesce(pl.col("answer_area").replace("", None), fallback)
    return frame.with_columns(
        caller_area=pl.when(placed.get_column("area").is_not_null())
        .then(placed.get_column("area"))
        .when(same_city)
        .then(home)
        .fill_null(""),
        caller_origin=pl.when(placed.get_column("area").is_not_null())
        .then(pl.lit("area"))
        .when(same_city & home.is_not_null())
        .then(pl.lit("same_city"))
        .otherwise(pl.lit("unknown")),
        answer_area=pl.col("answer_area").fill_null(""),
    ).select("caller_area", "caller_origin", "answer_area", "answer_problem")


def normalise_called(called: pl.Expr, prefixes: tuple[str, ...] = ()) -> pl.Expr:
    """The dialled number as an account knows it (``4008001234``), from what switches write.

    Blanks, dashes, dots and brackets go; then the first of ``prefixes`` (a switch's
    routing prefix, longest first) it starts with; then ``+86``, ``0086`` or ``86`` before
    a 400/800 number, or the trunk ``0``. Anything else is left as it is (and names no
    account).

    Examples
    --------
    >>> numbers = pl.Series(["+864008001234", "864008001234", "04008001234", " 400 800 1234", "179094008001234"])
    >>> pl.select(normalise_called(pl.lit(numbers), ("17909",))).to_series().to_list()
    ['4008001234', '4008001234', '4008001234', '4008001234', '4008001234']
    """
    number = called.fill_null("").str.replace_all(_SEPARATORS, "")
    for prefix in sorted(prefixes, key=len, reverse=True):
        number = pl.when(number.str.starts_with(prefix)).then(number.str.slice(len(prefix))).otherwise(number)
    return number.str.replace(r"^(?:\+86|0086|86|0)([48]00\d{7})$", "${1}")
