"""Areas derived from numbers (schemas.numbering, issue 7 item 4)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from phone import Phone

from schemas.numbering import AreaError, area_of, area_table, derive_areas, mobile_segments


@pytest.mark.parametrize(
    ("number", "area"),
    [
        ("01062345678", "010"),  # Beijing: a 2-digit code after the trunk 0
        ("02161234567", "021"),  # Shanghai
        ("02087654321", "020"),  # Guangzhou
        ("02388776655", "023"),  # Chongqing
        ("075512345678", "0755"),  # Shenzhen: a 3-digit code
        ("051266778899", "0512"),  # Suzhou
        ("057188889999", "0571"),  # Hangzhou
        ("0898 6688 7799", "0898"),  # Hainan, written with spaces
        ("010-6234-5678", "010"),  # and with dashes
    ],
)
def test_a_fixed_line_carries_its_area_code(number: str, area: str) -> None:
    assert area_of(number) == area


@pytest.mark.parametrize(
    ("number", "area"),
    [
        ("13800138000", "010"),  # 1380013: Beijing
        ("15920012345", "0755"),  # 1592001: Shenzhen
        ("19912345678", "0315"),  # 1991234: Tangshan
    ],
)
def test_a_mobile_gets_the_area_of_its_segment(number: str, area: str) -> None:
    assert area_of(number) == area
    # the segment database itself says so, one lookup at a time
    assert Phone().find(number)["area_code"] == area


@pytest.mark.parametrize(
    ("number", "area"),
    [
        ("+8613800138000", "010"),
        ("008613800138000", "010"),
        ("+86 138 0013 8000", "010"),
        ("+861062345678", "010"),  # +86 drops the trunk 0 of a fixed line
        ("00861062345678", "010"),
        ("+8675512345678", "0755"),
        ("013800138000", "010"),  # a mobile calling from another area, with a 0 in front
    ],
)
def test_plus86_and_0086_are_national(number: str, area: str) -> None:
    assert area_of(number) == area


@pytest.mark.parametrize(
    ("number", "area"),
    [
        ("+14155550123", "+1"),
        ("0014155550123", "+1"),
        ("+442071234567", "+44"),
        ("00442071234567", "+44"),
        ("+85221234567", "+852"),  # Hong Kong is international
        ("+886223456789", "+886"),
        ("+81312345678", "+81"),
    ],
)
def test_another_country_code_gives_an_international_area(number: str, area: str) -> None:
    assert area_of(number) == area


@pytest.mark.parametrize(
    ("number", "words"),
    [
        ("", "is empty"),
        ("62345678", "a local number without its area code"),
        ("4008001234", "not a telephone number with an area"),  # a 400 number has no area
        ("8001234567", "not a telephone number with an area"),
        ("95588", "a local number without its area code"),
        ("anonymous", "not a telephone number with an area"),
        ("0600123456", "not a Chinese fixed-line number with a valid area code"),
        ("01012", "not a Chinese fixed-line number with a valid area code"),
        ("+999123456", "no known country code"),
        ("+44", "too short or too long"),
        ("+4420712345678901234", "too short or too long"),
        ("1380013800", "not a telephone number with an area"),  # a mobile one digit short
        ("13800138000x", "not a telephone number with an area"),
    ],
)
def test_garbage_has_no_area_and_the_reason_says_why(number: str, words: str) -> None:
    with pytest.raises(AreaError, match=words):
        area_of(number)


def test_an_unknown_mobile_segment_is_named() -> None:
    known = set(mobile_segments("010").tolist())
    # The first 7-digit 1[3-9] segment the database does not hold.
    held = _all_segments()
    missing = next(s for s in range(1_300_000, 2_000_000) if s not in held)
    assert missing not in known
    with pytest.raises(AreaError, match=f"segment {missing} is not in the segment database"):
        area_of(f"{missing}0000")


def _all_segments() -> set[int]:
    table = area_table()  # touch the cache
    assert table.height > 300
    return set(np.concatenate([mobile_segments(code) for code in table.get_column("area_code").to_list()]).tolist())


def test_whole_columns_keep_their_order_and_nulls() -> None:
    numbers = pl.Series(["01062345678", None, "13800138000", "garbage", "01062345678", "+14155550123"])
    derived = derive_areas(numbers)
    assert derived.get_column("area").to_list() == ["010", None, "010", None, "010", "+1"]
    problems = derived.get_column("problem").to_list()
    assert [p is None for p in problems] == [True, False, True, False, True, True]


def test_the_vectorised_segments_agree_with_the_packages_own_lookup() -> None:
    rng = np.random.default_rng(5)
    segments = rng.choice(np.concatenate([mobile_segments(c) for c in ("010", "021", "0755", "0471", "0991")]), 300)
    numbers = [f"{s}{n:04d}" for s, n in zip(segments.tolist(), rng.integers(0, 10_000, 300).tolist(), strict=True)]
    derived = derive_areas(pl.Series(numbers)).get_column("area").to_list()
    lookup = Phone()
    assert derived == [lookup.find(n)["area_code"] for n in numbers]


