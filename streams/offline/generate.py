"""Synthetic but realistic data sets: reference plans, accounts and a month of CDRs.

The output has the layout of a vector set (spec/rating.md 2.1-2.3): ``plans/*.toml``,
``accounts.toml`` and ``cdrs.csv``. It feeds ``cdrflow rate``, the benchmarks and demos.

Every random draw comes from one ``numpy`` generator seeded by the caller and every column
is built whole (numpy arrays, then polars string expressions), never one CDR at a time: a
million CDRs take a few seconds, and the same seed gives byte-identical files.

What makes the data realistic enough to exercise every rule of the rating contract:

- accounts spread over the reference plans, each owning 1-3 numbers of its plan's
  segments, with a long-tailed share of the traffic (a few call centres, many small shops);
- opening balances placed against each account's expected spend, so some accounts cross
  their low-balance threshold or fall into arrears during the month, and some daily caps;
- calls in Asia/Shanghai local time with a business-hours profile, ~60 % local, a little
  international, ~80 % answered, lognormal durations (median ~90 s, a few over an hour);
- the log written in hang-up order by several switches, so start times are only roughly
  ordered (spec 3: rating follows the log, not the clock);
- the defects a real feed has: switches re-sending a line (``duplicate``), calls to 400
  numbers nobody owns (``unknown_number``) and a few broken lines (``malformed``);
- with ``quirks``, what real switches write besides (issue 21): callers written
  ``+86...``, ``86...``, as a same-city number without its area code, withheld
  (``anonymous`` or empty) or masked (``1862831****``); a second, 0 s unanswered record of
  some answered calls written before it with the same id (an Asterisk Local-channel leg);
  Chinese text in a column (a caller's name in Asterisk's clid, the switch in canonical's
  switch_id), and the file in GBK when ``encoding="gbk"`` (what Excel on Chinese Windows
  saves).
"""

from __future__ import annotations

import calendar
import functools
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

import tariffs
from schemas.columns import CDR_COLUMNS, CDR_HEADER, DISPOSITIONS
from schemas.money import money_expr
from schemas.numbering import mobile_segments

# Asia/Shanghai has kept UTC+08:00 without daylight saving since 1991, so local wall-clock
# seconds and the offset can be handled as plain integers.
_UTC_OFFSET = "+08:00"
_DAY_S = 86_400

#: Reference plans and the share of accounts on each: the three rated by class and
#: segment, then the two shaped like real 400 packages (issue 23): a 3-year prepaid term
#: package and a floor per number, both one rate for every caller.
_PLAN_IDS: tuple[str, ...] = ("std-100", "eco-4007", "vip-500", "pkg-3y-3000", "floor-50")
_PLAN_SHARES = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
_PACKAGE_PLAN = _PLAN_IDS.index("pkg-3y-3000")
#: What an account on the package plan paid for it, in cents, and its term in months.
_PACKAGE_PRICE_CENTS = 300_000
_PACKAGE_TERM_MONTHS = 36
#: Share of package accounts whose 3-year term ends during the generated month (their
#: credit left is forfeited at their first call after it); the others bought it 1-30 months ago.
_ENDING_SHARE = 0.3

# Number blocks: a number is ``base + suffix`` with ``lo <= suffix < hi`` (10 digits).
# 4001 is split so that VIP accounts get a few 40010xxxxx numbers (their own rate in vip-500).
_BLOCK_NAMES: tuple[str, ...] = ("4008", "4006", "4007", "4001", "40010")
_BLOCK_BASE = np.array([4008, 4006, 4007, 4001, 4001], dtype=np.int64) * 1_000_000
_BLOCK_LO = np.array([0, 0, 0, 100_000, 0], dtype=np.int64)
_BLOCK_HI = np.array([1_000_000, 1_000_000, 1_000_000, 1_000_000, 100_000], dtype=np.int64)
#: Chance of each block per plan (rows follow ``_PLAN_IDS``).
_PLAN_BLOCKS = np.array(
    [
        [0.85, 0.15, 0.0, 0.0, 0.0],  # std-100: mostly 4008, some 4006
        [0.0, 0.0, 1.0, 0.0, 0.0],  # eco-4007
        [0.0, 0.0, 0.0, 0.9, 0.1],  # vip-500: 4001 and a few 40010xxxxx
        [0.5, 0.5, 0.0, 0.0, 0.0],  # pkg-3y-3000: 4008 and 4006 (one rate for any segment)
        [0.0, 0.3, 0.7, 0.0, 0.0],  # floor-50: 4007 and 4006
    ]
)
#: Unowned numbers are drawn where misdials land most: the 4008 and 4007 blocks.
_UNKNOWN_BLOCKS = np.array([0, 2])
_NUMBERS_PER_ACCOUNT_P = np.array([0.6, 0.3, 0.1])  # 1, 2 or 3 numbers

# Rough price of a billed minute and included minutes per plan (first version of each
# reference plan). Only used to place opening balances near what an account will spend.
_ROUGH_PER_MINUTE_CNY = np.array([0.15, 0.13, 0.12, 0.12, 0.10])
_ROUGH_INCLUDED_MINUTES = np.array([300.0, 0.0, 60.0, 0.0, 0.0])
_ROUGH_BILLED_MINUTES_PER_CALL = 2.4  # answered share x mean started minutes

_DOMESTIC_AREAS: tuple[str, ...] = (
    "010", "021", "020", "0755", "0571", "028", "027", "025",
    "029", "023", "022", "0512", "0532", "0731", "0371", "024",
)  # fmt: skip
_DOMESTIC_AREA_WEIGHTS = np.array([14, 14, 9, 10, 7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 3, 3], dtype=float)
_DOMESTIC_AREA_P = _DOMESTIC_AREA_WEIGHTS / _DOMESTIC_AREA_WEIGHTS.sum()
#: International callers: the area written (``+`` country code, as numbers give it) and
#: what is dialled before the 8 digits drawn (a London number once written with ``00``).
_INTERNATIONAL_AREAS: tuple[str, ...] = ("+1", "+44", "+44", "+852")
_INTERNATIONAL_DIAL: tuple[str, ...] = ("+121", "+4420", "004420", "+852")
_INTERNATIONAL_AREA_P = np.array([3, 2, 1, 4]) / 10
#: Every area code; an index below ``len(_DOMESTIC_AREAS)`` is domestic.
_AREAS: tuple[str, ...] = _DOMESTIC_AREAS + _INTERNATIONAL_AREAS
#: What a number of each area starts with, before the 8 digits of a landline.
_DIAL_PREFIXES: tuple[str, ...] = _DOMESTIC_AREAS + _INTERNATIONAL_DIAL
_LOCAL_SHARE = 0.6
_INTERNATIONAL_SHARE = 0.01

# Switches by region of the caller (bj north, sh east, gz south, cd west, gw the
# international gateway); each region but the gateway has two.
_SWITCHES: tuple[str, ...] = (
    "sw-bj1", "sw-bj2", "sw-sh1", "sw-sh2", "sw-gz1", "sw-gz2", "sw-cd1", "sw-cd2", "sw-gw1",
)  # fmt: skip
_REGION_FIRST_SWITCH = np.array([0, 2, 4, 6, 8])
_REGION_SWITCH_COUNT = np.array([2, 2, 2, 2, 1])
_REGION_OF_AREA = np.array(
    [0, 1, 2, 2, 1, 3, 3, 1, 3, 3, 0, 1, 0, 2, 0, 0]  # domestic, in _DOMESTIC_AREAS order
    + [4] * len(_INTERNATIONAL_AREAS)
)

# Calls per local hour on a working day: morning and afternoon peaks, a lunch dip, quiet nights.
_HOURLY_PROFILE = np.array(
    [0.06, 0.04, 0.03, 0.03, 0.04, 0.08, 0.20, 0.45, 1.00, 1.60, 1.70, 1.60,
     0.90, 1.00, 1.50, 1.60, 1.50, 1.30, 0.90, 0.60, 0.45, 0.30, 0.18, 0.10]
)  # fmt: skip
_WEEKEND_FACTOR = 0.35

#: Chance of each disposition, in ``DISPOSITIONS`` order (ANSWERED first).
_DISPOSITION_P = np.array([0.80, 0.11, 0.05, 0.025, 0.015])
_ANSWERED = DISPOSITIONS.index("ANSWERED")
_NO_ANSWER = DISPOSITIONS.index("NO ANSWER")
_BILLSEC_MEDIAN_S = 90.0
_BILLSEC_SIGMA = 1.1  # P(billsec > 1 h) is about 0.04 %
_BILLSEC_MAX_S = 5 * 3600
_ZERO_BILLSEC_SHARE = 0.003  # answered, then hung up at once: unbilled (spec 4 step 6)

_MOBILE_CALLER_SHARE = 0.7
_MOBILE_ANSWER_SHARE = 0.2  # calls forwarded to a mobile instead of the office line

_RESENT_SHARE = 0.003
_UNKNOWN_SHARE = 0.002
_MALFORMED_SHARE = 0.001
#: Kinds of broken line, as stored in the ``malformed`` column (0: a good line).
_MALFORMED_KINDS: tuple[str, ...] = (
    "missing_column",
    "timestamp_without_offset",
    "negative_billsec",
    "misspelt_disposition",
)
#: Formats cdrflow generate writes, and the file each writes.
CDR_FILE_NAMES: dict[str, str] = {"canonical": "cdrs.csv", "asterisk": "Master.csv"}
#: Encodings cdrflow generate writes.
ENCODINGS: tuple[str, ...] = ("utf-8", "gbk")
#: With quirks: the share of callers written in each other form, in the order of
#: ``_CALLER_FORMS[1:]``, and the share of answered calls with a 0 s leg before them.
_CALLER_FORMS: tuple[str, ...] = ("as_is", "plus86", "bare86", "same_city", "anonymous", "empty", "masked")
_CALLER_FORM_SHARES = np.array([0.05, 0.04, 0.05, 0.02, 0.01, 0.01])
_EXTRA_LEG_SHARE = 0.02
_NAMES: tuple[str, ...] = ("张三", "李四, 销售部", "王五", "Smith, John", "赵六")
#: Lines formatted and written per step (and per ``progress`` call).
_WRITE_STEP = 250_000

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class GeneratedDataset:
    """What :func:`generate_dataset` wrote: the paths of a vector-set layout and its counts.

    ``cdrs`` counts every data line of ``cdrs.csv`` (header excluded), including the
    ``resent``, ``unknown_number`` and ``malformed`` lines; ``numbers`` counts the 400
    numbers owned by the accounts.
    """

    root: Path
    plans_dir: Path
    accounts_file: Path
    cdrs_file: Path
    cdrs: int
    accounts: int
    numbers: int
    malformed: int
    resent: int
    unknown_number: int
    #: With quirks: calls whose caller has no area (withheld, masked), and 0 s legs.
    unknown_callers: int = 0
    extra_legs: int = 0


def generate_dataset(
    out: Path,
    *,
    cdrs: int,
    accounts: int,
    month: str,
    seed: int,
    progress: Callable[[int], None] | None = None,
    cdr_format: str = "canonical",
    hot_share: float = 0.0,
    quirks: bool = False,
    encoding: str = "utf-8",
) -> GeneratedDataset:
    """Write a realistic data set: reference plans, accounts and a month of CDRs.

    Writes ``out/plans/*.toml`` (copies of the reference plans), ``out/accounts.toml``
    and ``out/cdrs.csv`` (canonical header, spec/rating.md 2.3), the layout of a vector
    set, so ``cdrflow rate out/cdrs.csv --plans out/plans --accounts out/accounts.toml``
    runs on it. Existing files of those names are replaced.

    Parameters
    ----------
    out
        Folder to write into; created if missing.
    cdrs
        Number of data lines in ``cdrs.csv``, defects included: about 0.3 % re-sent
        copies of earlier lines, 0.2 % calls to unowned numbers, 0.1 % malformed lines.
    accounts
        Number of accounts (each owns 1-3 numbers).
    month
        Billing month ``YYYY-MM``; every call starts and ends inside it, in
        Asia/Shanghai local time.
    seed
        Seed of the random generator: the same arguments give byte-identical files.
    progress
        Called a few times with the number of CDR lines written so far (the last call
        with ``cdrs``).
    hot_share
        Share of the calls (0 to 0.9) that go to the first account, a large hotline, on top
        of the usual long tail; 0 leaves the draw as it is.
    cdr_format
        ``canonical`` writes ``cdrs.csv``; ``asterisk`` writes the same calls as Asterisk
        cdr_csv's ``Master.csv`` with the shipped cdr.conf (no header, 18 columns, text
        quoted and integers not, an unanswered call's answer time empty and unquoted,
        times in UTC: ``usegmtime=yes``; the answer number in ``userfield``), its broken
        lines broken the same way (a missing canonical column is four extra Asterisk
        ones: 17 to 21 columns are layouts of their own). Numbers are consistent with the areas
        either way: the areas derived from them (``schemas.numbering``) are those of the
        canonical file.
    quirks
        Write what real switches write besides (module docstring): callers in other
        forms, 0 s legs, Chinese text. The two formats still rate alike.
    encoding
        ``utf-8`` or ``gbk`` (read it with ``--encoding gbk``).

    Returns
    -------
    GeneratedDataset
        The paths written and the counts of lines, accounts, numbers and defects.

    Raises
    ------
    ValueError
        When a count is negative, ``month`` is not ``YYYY-MM``, CDRs are asked for
        without accounts, or the number blocks cannot hold that many accounts.

    Examples
    --------
    >>> import tempfile
    >>> from tariffs import load_tariffs
    >>> data = generate_dataset(
    ...     Path(tempfile.mkdtemp()), cdrs=2_000, accounts=50, month="2026-03", seed=7
    ... )
    >>> data.cdrs, data.accounts, data.resent
    (2000, 50, 6)
    >>> len(load_tariffs(data.plans_dir, data.accounts_file).accounts)
    50
    """
    first_day, days = _parse_month(month)
    if cdr_format not in CDR_FILE_NAMES:
        raise ValueError(f"format must be one of {', '.join(CDR_FILE_NAMES)}, got {cdr_format!r}")
    if cdrs < 0 or accounts < 0:
        raise ValueError(f"cdrs and accounts must not be negative, got cdrs={cdrs}, accounts={accounts}")
    if cdrs > 0 and accounts == 0:
        raise ValueError("CDRs need at least one account to call (accounts=0)")
    if not 0.0 <= hot_share <= 0.9:
        raise ValueError(f"hot_share must be between 0 and 0.9, got {hot_share}")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")

    rng = np.random.default_rng(seed)
    out = Path(out)
    plans_dir = out / "plans"
    plans_dir.mkdir(parents=True, exist_ok=True)
    for plan_file in sorted((Path(tariffs.__file__).parent / "reference").glob("*.toml")):
        shutil.copyfile(plan_file, plans_dir / plan_file.name)

    n_resent = round(cdrs * _RESENT_SHARE)
    n_unknown = round(cdrs * _UNKNOWN_SHARE)
    n_malformed = round(cdrs * _MALFORMED_SHARE)

    book = _draw_accounts(rng, accounts, unknown_pool=_unknown_pool_size(n_unknown), hot_share=hot_share)
    balances = _place_balances(rng, book, expected_calls=cdrs, first_day=first_day)
    accounts_file = out / "accounts.toml"
    accounts_file.write_text(_accounts_toml(book, balances, month=month, seed=seed), encoding="utf-8")

    n_legs = round(cdrs * _EXTRA_LEG_SHARE) if quirks else 0
    calls = _draw_calls(rng, book, cdrs - n_resent - n_legs, first_day=first_day, days=days)
    log = _with_defects(rng, calls, book, n_resent=n_resent, n_unknown=n_unknown, n_malformed=n_malformed)
    if quirks:
        log = _with_quirks(rng, log, n_legs)
    else:
        log = log.with_columns(caller_form=pl.lit(0, dtype=pl.Int8), name=pl.lit(None, dtype=pl.String))
    cdrs_file = out / CDR_FILE_NAMES[cdr_format]
    _write_cdrs(log, cdrs_file, progress, asterisk=cdr_format == "asterisk", encoding=encoding)
    forms = log.get_column("caller_form")

    return GeneratedDataset(
        root=out,
        plans_dir=plans_dir,
        accounts_file=accounts_file,
        cdrs_file=cdrs_file,
        cdrs=log.height,
        accounts=accounts,
        numbers=len(book.number),
        malformed=n_malformed,
        resent=n_resent,
        unknown_number=n_unknown,
        unknown_callers=int(forms.is_in([_CALLER_FORMS.index(f) for f in ("anonymous", "empty", "masked")]).sum()),
        extra_legs=n_legs,
    )


def _parse_month(month: str) -> tuple[date, int]:
    """``"2026-03"`` -> (first day, number of days)."""
    match = _MONTH.match(month)
    if not match:
        raise ValueError(f"month must be YYYY-MM (e.g. 2026-03), got {month!r}")
    year, month_no = int(match[1]), int(match[2])
    return date(year, month_no, 1), calendar.monthrange(year, month_no)[1]


def _unknown_pool_size(n_unknown_calls: int) -> int:
    # A few unowned numbers each called a few times, as misdials and lapsed numbers are.
    return 0 if n_unknown_calls == 0 else max(1, n_unknown_calls // 3)


@dataclass
class _Book:
    """Accounts and numbers as parallel numpy arrays (index = account or number)."""

    plan: np.ndarray  # per account: index into _PLAN_IDS
    weight: np.ndarray  # per account: share of the traffic (sums to 1)
    home_area: np.ndarray  # per account: index into _DOMESTIC_AREAS, where calls are answered
    account_of_number: np.ndarray  # per number
    number: np.ndarray  # per number: the 10-digit 400 number (int64)
    number_weight: np.ndarray  # per number: share of the traffic (sums to 1)
    unknown: np.ndarray  # 400 numbers owned by nobody


@dataclass(frozen=True)
class _Balances:
    """Per account money settings, in cents (-1: field left out of the accounts file)."""

    opening_cents: np.ndarray
    threshold_cents: np.ndarray  # -1: the default "50.00" applies
    daily_cap_cents: np.ndarray  # -1: the plan's daily cap applies
    #: ``opened_at`` of accounts on the term package (ISO 8601), None for the others
    opened_at: list[str | None]


def _draw_accounts(rng: np.random.Generator, n: int, *, unknown_pool: int, hot_share: float = 0.0) -> _Book:
    plan = rng.choice(len(_PLAN_IDS), size=n, p=_PLAN_SHARES)
    # Long-tailed traffic: a few call centres take hundreds of calls a day, most accounts a few.
    weight = rng.lognormal(0.0, 1.3, size=n) * np.where(plan == _PLAN_IDS.index("vip-500"), 2.0, 1.0)
    weight /= max(weight.sum(), 1e-300)
    if hot_share > 0 and n > 1:  # the first account a hotline taking that share of the calls
        weight[1:] *= (1.0 - hot_share) / max(weight[1:].sum(), 1e-300)
        weight[0] = hot_share
    home_area = rng.choice(len(_DOMESTIC_AREAS), size=n, p=_DOMESTIC_AREA_P)

    per_account = rng.choice(len(_NUMBERS_PER_ACCOUNT_P), size=n, p=_NUMBERS_PER_ACCOUNT_P) + 1
    account_of_number = np.repeat(np.arange(n), per_account)
    # Block of each number, drawn from its plan's row of _PLAN_BLOCKS by inverse CDF.
    cumulative = np.cumsum(_PLAN_BLOCKS, axis=1)[plan[account_of_number]]
    block = (rng.random(len(account_of_number))[:, None] >= cumulative[:, :-1]).sum(axis=1)
    unknown_block = _UNKNOWN_BLOCKS[np.arange(unknown_pool) % len(_UNKNOWN_BLOCKS)]

    number = np.empty(len(block), dtype=np.int64)
    unknown = np.empty(unknown_pool, dtype=np.int64)
    for b, name in enumerate(_BLOCK_NAMES):  # one draw per block, not per number
        owned, unowned = np.flatnonzero(block == b), np.flatnonzero(unknown_block == b)
        space = int(_BLOCK_HI[b] - _BLOCK_LO[b])
        wanted = len(owned) + len(unowned)
        if wanted > space:
            raise ValueError(
                f"too many accounts: block {name} has room for {space} numbers, {wanted} wanted"
            )
        # Distinct suffixes make every number unique, owned or not (spec 2.2).
        drawn = _BLOCK_BASE[b] + _BLOCK_LO[b] + rng.choice(space, size=wanted, replace=False)
        number[owned], unknown[unowned] = drawn[: len(owned)], drawn[len(owned) :]

    # An account's traffic split unevenly over its numbers (the main number takes most).
    split = rng.exponential(size=len(number))
    split /= np.bincount(account_of_number, weights=split, minlength=n)[account_of_number]
    number_weight = weight[account_of_number] * split
    number_weight /= max(number_weight.sum(), 1e-300)
    return _Book(plan, weight, home_area, account_of_number, number, number_weight, unknown)


def _place_balances(rng: np.random.Generator, book: _Book, *, expected_calls: int, first_day: date) -> _Balances:
    """Opening balances, thresholds and cap overrides that make some alerts happen (spec 5)."""
    n = len(book.plan)
    billed_minutes = book.weight * expected_calls * _ROUGH_BILLED_MINUTES_PER_CALL
    chargeable_minutes = np.maximum(0.0, billed_minutes - _ROUGH_INCLUDED_MINUTES[book.plan])
    spend = chargeable_minutes * _ROUGH_PER_MINUTE_CNY[book.plan]

    explicit = rng.random(n) < 0.35
    threshold = np.where(explicit, rng.choice([10.0, 20.0, 100.0, 200.0, 500.0], size=n), 50.0)
    # Comfortable (a few months of spend), tight (low_balance, arrears for big spenders),
    # nearly empty (arrears without a low_balance crossing), already in arrears.
    profile = rng.choice(4, size=n, p=[0.75, 0.18, 0.05, 0.02])
    comfortable = threshold + spend * rng.lognormal(np.log(3.0), 0.5, size=n) + rng.uniform(50, 500, size=n)
    tight = threshold + spend * rng.uniform(0.3, 1.0, size=n) + rng.uniform(1, 20, size=n)
    nearly_empty = threshold * rng.uniform(0.0, 1.0, size=n)
    in_arrears = -rng.uniform(1, 100, size=n)
    opening = np.choose(profile, [comfortable, tight, nearly_empty, in_arrears])

    capped = rng.random(n) < 0.10
    cap = rng.choice([5.0, 10.0, 20.0, 30.0, 50.0, 80.0, 100.0], size=n)

    # Accounts on the term package bought it when they were opened: on top of the balance
    # placed above (never in arrears: the package must be paid), its price (spec/ledger.md).
    package = book.plan == _PACKAGE_PLAN
    opening = np.where(package, np.maximum(opening, 0.0) + _PACKAGE_PRICE_CENTS / 100, opening)
    return _Balances(
        opening_cents=np.round(opening * 100).astype(np.int64),
        threshold_cents=np.where(explicit, np.round(threshold * 100), -1).astype(np.int64),
        daily_cap_cents=np.where(capped, np.round(cap * 100), -1).astype(np.int64),
        opened_at=_package_openings(rng, package, first_day),
    )


def _package_openings(rng: np.random.Generator, package: np.ndarray, first_day: date) -> list[str | None]:
    """When each account on the term package was opened: for some, 36 months before a
    moment of the generated month (their term ends in it: the credit left is forfeited at
    their first call after it); for the others, 1 to 30 months before the month."""
    ending = rng.random(package.size) < _ENDING_SHARE
    seconds = rng.integers(0, 27 * _DAY_S, size=package.size)
    months_back = np.where(ending, _PACKAGE_TERM_MONTHS, rng.integers(1, 31, size=package.size))
    start = datetime(first_day.year, first_day.month, 1)
    opened: list[str | None] = []
    for index in range(package.size):
        if not package[index]:
            opened.append(None)
            continue
        month0 = first_day.year * 12 + first_day.month - 1 - int(months_back[index])
        local = start.replace(year=month0 // 12, month=month0 % 12 + 1) + timedelta(seconds=int(seconds[index]))
        opened.append(local.strftime("%Y-%m-%dT%H:%M:%S") + _UTC_OFFSET)
    return opened


def _accounts_toml(book: _Book, balances: _Balances, *, month: str, seed: int) -> str:
    """The accounts file (spec 2.2), one ``[[accounts]]`` table per account."""
    n = len(book.plan)
    width = max(5, len(str(n)))
    numbers = (
        pl.DataFrame({"account": book.account_of_number, "number": book.number})
        .group_by("account", maintain_order=True)
        .agg(pl.format('"{}"', pl.col("number")).str.join(", ").alias("numbers"))
        .sort("account")
    )
    cents = pl.DataFrame(
        {
            "opening": balances.opening_cents,
            "threshold": np.maximum(balances.threshold_cents, 0),
            "cap": np.maximum(balances.daily_cap_cents, 0),
        }
    )
    # money_expr formats units of 0.0001 CNY: the one money formatter of the project.
    money = cents.select(money_expr(pl.col(c) * 100).alias(c) for c in cents.columns)
    tables = pl.DataFrame(
        {
            "id": pl.Series(np.arange(1, n + 1)).cast(pl.String).str.zfill(width),
            "plan": pl.Series(_PLAN_IDS).gather(book.plan),
            "numbers": numbers["numbers"],
            "opening": money["opening"],
            "threshold": money["threshold"],
            "cap": money["cap"],
            "has_threshold": balances.threshold_cents >= 0,
            "has_cap": balances.daily_cap_cents >= 0,
            "opened_at": pl.Series(balances.opened_at, dtype=pl.String),
        }
    ).select(
        pl.concat_str(
            pl.format('[[accounts]]\nid = "A{}"\nplan = "{}"\n', "id", "plan"),
            pl.format("numbers = [{}]\n", "numbers"),
            pl.format('opening_balance = "{}"\n', "opening"),
            pl.when("has_threshold")
            .then(pl.format('low_balance_threshold = "{}"\n', "threshold"))
            .otherwise(pl.lit("")),
            pl.when("has_cap").then(pl.format('daily_cap = "{}"\n', "cap")).otherwise(pl.lit("")),
            pl.when(pl.col("opened_at").is_not_null())
            .then(pl.format("opened_at = {}\n", "opened_at"))
            .otherwise(pl.lit("")),
        )
    )
    header = f"# Generated by streams.offline.generate: {n} accounts, month {month}, seed {seed}.\n\n"
    return header + "\n".join(tables.to_series().to_list())


def _draw_calls(rng: np.random.Generator, book: _Book, n: int, *, first_day: date, days: int) -> pl.DataFrame:
    """``n`` distinct calls as numbers, in log (hang-up) order, with per-switch sequence numbers."""
    number_index = rng.choice(len(book.number), size=n, p=book.number_weight) if n else np.zeros(0, np.int64)
    account = book.account_of_number[number_index]

    # When: a (day, hour) cell by weight, then a uniform second inside the hour.
    weekday = np.array([date(first_day.year, first_day.month, d + 1).weekday() for d in range(days)])
    day_weight = np.where(weekday >= 5, _WEEKEND_FACTOR, 1.0)
    cell_weight = (day_weight[:, None] * _HOURLY_PROFILE[None, :]).ravel()
    cell = rng.choice(cell_weight.size, size=n, p=cell_weight / cell_weight.sum())
    start = cell.astype(np.int64) * 3600 + rng.integers(0, 3600, size=n)

    # Who: local calls come from the answering office's area, the others from elsewhere.
    home = book.home_area[account]
    kind = rng.random(n)
    international = kind < _INTERNATIONAL_SHARE
    local = ~international & (kind < _INTERNATIONAL_SHARE + _LOCAL_SHARE)
    n_domestic = len(_DOMESTIC_AREAS)
    elsewhere = rng.choice(n_domestic, size=n, p=_DOMESTIC_AREA_P)
    clash = elsewhere == home  # a long-distance caller must not share the answer area
    elsewhere[clash] = (home[clash] + rng.integers(1, n_domestic, size=int(clash.sum()))) % n_domestic
    abroad = n_domestic + rng.choice(len(_INTERNATIONAL_AREAS), size=n, p=_INTERNATIONAL_AREA_P)
    caller_area = np.where(international, abroad, np.where(local, home, elsewhere))
    region = _REGION_OF_AREA[caller_area]
    switch = _REGION_FIRST_SWITCH[region] + (rng.random(n) * _REGION_SWITCH_COUNT[region]).astype(np.int64)

    # How it went: disposition, ringing time, talk time.
    disposition = rng.choice(len(DISPOSITIONS), size=n, p=_DISPOSITION_P)
    answered = disposition == _ANSWERED
    ring = np.select(
        [answered, disposition == _NO_ANSWER],
        [2 + rng.gamma(2.0, 3.0, size=n).astype(np.int64), rng.integers(15, 61, size=n)],
        rng.integers(0, 4, size=n),  # busy, failed, congestion: over within seconds
    )
    talk = rng.lognormal(np.log(_BILLSEC_MEDIAN_S), _BILLSEC_SIGMA, size=n)
    billsec = np.clip(talk.astype(np.int64), 1, _BILLSEC_MAX_S)
    billsec[rng.random(n) < _ZERO_BILLSEC_SHARE] = 0
    billsec = np.where(answered, billsec, 0)
    end = start + ring + billsec
    # Keep the whole call inside the month: a call that would run past its end starts earlier.
    shift = np.maximum(0, end - (days * _DAY_S - 1))
    start, end = start - shift, end - shift
    # Local wall-clock seconds counted as if they were UTC: from_epoch then prints local time.
    local_epoch = calendar.timegm(first_day.timetuple())

    caller_mobile = (rng.random(n) < _MOBILE_CALLER_SHARE) & ~international
    answer_mobile = rng.random(n) < _MOBILE_ANSWER_SHARE
    # 8 digits after the area code; a local number starts with 2-7 in every area.
    landline = rng.integers(20_000_000, 80_000_000, size=(2, n))
    calls = pl.DataFrame(
        {
            "switch": switch,
            "called": book.number[number_index],
            "caller_area": caller_area,
            "answer_area": home,
            # Digits after the area code (landlines, abroad) or the whole mobile number.
            "caller_tail": np.where(caller_mobile, _mobile_numbers(rng, caller_area), landline[0]),
            "caller_mobile": caller_mobile,
            "answer_tail": np.where(answer_mobile, _mobile_numbers(rng, home), landline[1]),
            "answer_mobile": answer_mobile,
            "start": start + local_epoch,
            "answer": np.where(answered, start + ring + local_epoch, -1),  # -1: not answered
            "end": end + local_epoch,
            "billsec": billsec,
            "disposition": disposition,
        }
    )
    # spec 3: switches write a CDR at hang-up, so the log is in end-time order.
    calls = calls.sort("end", "start", maintain_order=True)
    # Each switch numbers its own CDRs in the order it writes them.
    # Switch sequence numbers run on from month to month: the month (YYMM) leads, so the
    # months of one seed never share a cdr_id (they would be duplicates within the horizon).
    month_base = ((first_day.year % 100) * 100 + first_day.month) * 10**8
    return calls.with_columns(seq=month_base + pl.int_range(1, pl.len() + 1).over("switch"))


def _mobile_numbers(rng: np.random.Generator, area: np.ndarray) -> np.ndarray:
    """A mobile number of each (domestic) area: one of its segments (号段), then 4 digits."""
    segments = _area_segments()
    counts = np.array([len(s) for s in segments])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    domestic = np.minimum(area, len(_DOMESTIC_AREAS) - 1)
    pick = starts[domestic] + (rng.random(len(area)) * counts[domestic]).astype(np.int64)
    return np.concatenate(segments)[pick] * 10_000 + rng.integers(0, 10_000, size=len(area))


@functools.cache
def _area_segments() -> tuple[np.ndarray, ...]:
    """The mobile segments of each domestic area, from the segment database."""
    found = tuple(mobile_segments(code) for code in _DOMESTIC_AREAS)
    empty = [code for code, segments in zip(_DOMESTIC_AREAS, found, strict=True) if len(segments) == 0]
    if empty:  # pragma: no cover - the database has segments for every big city
        raise ValueError(f"no mobile segments known for areas {', '.join(empty)}")
    return found


def _with_defects(
    rng: np.random.Generator,
    calls: pl.DataFrame,
    book: _Book,
    *,
    n_resent: int,
    n_unknown: int,
    n_malformed: int,
) -> pl.DataFrame:
    """Add a real feed's defects: unowned numbers, broken lines and re-sent copies.

    Each defect hits different calls, so every one is rejected for its own reason
    (spec 4: malformed, unknown_number, duplicate).
    """
    chosen = rng.choice(calls.height, size=n_unknown + n_malformed + n_resent, replace=False)
    unknown_rows = chosen[:n_unknown]
    malformed_rows = chosen[n_unknown : n_unknown + n_malformed]
    resent_rows = np.sort(chosen[n_unknown + n_malformed :])

    called = calls["called"].to_numpy().copy()
    called[unknown_rows] = book.unknown[rng.integers(0, max(len(book.unknown), 1), size=n_unknown)]
    malformed = np.zeros(calls.height, dtype=np.int8)
    malformed[malformed_rows] = 1 + rng.integers(0, len(_MALFORMED_KINDS), size=n_malformed)
    calls = calls.with_columns(called=called, malformed=malformed, position=np.arange(calls.height))

    # A switch re-sends a line after a reconnect, minutes to hours later: an exact copy
    # placed after the original, at the point of the log its delay lands on.
    delay = rng.lognormal(np.log(600.0), 1.5, size=n_resent).astype(np.int64) + 1
    copies = calls[resent_rows].with_columns(resend_at=pl.col("end") + delay)
    originals = calls.with_columns(resend_at=pl.col("end"))
    return (
        pl.concat([originals, copies])
        .with_columns(is_copy=pl.int_range(pl.len()) >= calls.height)
        .sort("resend_at", "is_copy", "position", maintain_order=True)
        .drop("resend_at", "is_copy", "position")
    )


def _with_quirks(rng: np.random.Generator, log: pl.DataFrame, n_legs: int) -> pl.DataFrame:
    """Callers in the forms real switches write, names, and 0 s legs before some calls."""
    n = log.height
    forms = rng.choice(len(_CALLER_FORMS), size=n, p=np.concatenate(([1 - _CALLER_FORM_SHARES.sum()], _CALLER_FORM_SHARES)))
    domestic = log.get_column("caller_area").to_numpy() < len(_DOMESTIC_AREAS)
    landline = ~log.get_column("caller_mobile").to_numpy()
    same_city = (log.get_column("caller_area") == log.get_column("answer_area")).to_numpy() & landline
    form_of = {name: index for index, name in enumerate(_CALLER_FORMS)}
    # A form the caller cannot have is dropped (a caller abroad is not +86; only a caller
    # of the answering city dials without its area code), and a masked one is a mobile.
    forms[~domestic & (forms != form_of["anonymous"]) & (forms != form_of["empty"])] = form_of["as_is"]
    forms[(forms == form_of["same_city"]) & ~same_city] = form_of["as_is"]
    forms[(forms == form_of["masked"]) & landline] = form_of["as_is"]
    names = pl.Series(_NAMES).gather(rng.integers(0, len(_NAMES), size=n))
    log = log.with_columns(caller_form=pl.Series(forms, dtype=pl.Int8), name=names)
    answered = np.flatnonzero(((log.get_column("answer") >= 0) & (log.get_column("malformed") == 0)).to_numpy())
    if n_legs == 0 or len(answered) == 0:
        return log
    picked = np.sort(rng.choice(answered, size=min(n_legs, len(answered)), replace=False))
    # The leg that rang and was never answered: same call, same id, 0 s, written first.
    legs = log[picked].with_columns(
        answer=pl.lit(-1, dtype=pl.Int64),
        end=pl.col("start") + 1,
        billsec=pl.lit(0, dtype=log.schema["billsec"]),
        disposition=pl.lit(DISPOSITIONS.index("NO ANSWER"), dtype=log.schema["disposition"]),
    )
    order = np.concatenate((np.arange(n) * 2 + 1, picked * 2))
    return pl.concat([log, legs]).with_columns(_order=pl.Series(order)).sort("_order").drop("_order")


def _write_cdrs(
    log: pl.DataFrame,
    path: Path,
    progress: Callable[[int], None] | None,
    *,
    asterisk: bool = False,
    encoding: str = "utf-8",
) -> None:
    """Format the log as CSV lines and write them in steps, reporting progress."""
    with path.open("wb") as handle:
        if not asterisk:
            handle.write((CDR_HEADER + "\n").encode())
        for offset in range(0, log.height, _WRITE_STEP):
            lines = _format_lines(log.slice(offset, _WRITE_STEP))
            if asterisk:
                lines = _asterisk_lines(log.slice(offset, _WRITE_STEP))
            if encoding != "utf-8":
                handle.write(("\n".join(lines.to_list()) + "\n").encode(encoding) if lines.len() else b"")
            else:
                # Lines are already joined; "never" keeps polars from quoting the commas in them.
                lines.to_frame().write_csv(handle, include_header=False, quote_style="never", line_terminator="\n")
            if progress is not None:
                progress(min(offset + _WRITE_STEP, log.height))
    if progress is not None and log.height == 0:
        progress(0)


def _format_lines(calls: pl.DataFrame) -> pl.Series:
    """One canonical CSV line per call (spec 2.3); the ``malformed`` ones broken on purpose."""
    fields = _call_fields(calls)
    lines = fields.select(pl.concat_str(CDR_COLUMNS, separator=",").alias("line")).to_series()
    broken = (fields["malformed"] > 0).arg_true()
    if broken.len():
        lines = lines.scatter(broken, _broken_lines(fields[broken]))
    return lines


def _call_fields(calls: pl.DataFrame) -> pl.DataFrame:
    """The canonical fields of each call (spec 2.3), and its ``malformed`` kind."""
    areas = pl.Series(_AREAS)
    dial = pl.Series(_DIAL_PREFIXES)
    caller_area = areas.gather(calls["caller_area"])
    answer_area = areas.gather(calls["answer_area"])
    switch = pl.Series(_SWITCHES).gather(calls["switch"])
    form = pl.col("caller_form")
    national = pl.when("caller_mobile").then(pl.col("caller_tail").cast(pl.String)).otherwise(
        pl.concat_str(pl.col("caller_dial").str.slice(1), pl.col("caller_tail").cast(pl.String))
    )
    written = pl.when("caller_mobile").then(pl.col("caller_tail").cast(pl.String)).otherwise(
        pl.concat_str("caller_dial", pl.col("caller_tail").cast(pl.String))
    )
    caller = (
        pl.when(form == _CALLER_FORMS.index("plus86")).then(pl.concat_str(pl.lit("+86"), national))
        .when(form == _CALLER_FORMS.index("bare86")).then(pl.concat_str(pl.lit("86"), national))
        .when(form == _CALLER_FORMS.index("same_city")).then(pl.col("caller_tail").cast(pl.String))
        .when(form == _CALLER_FORMS.index("anonymous")).then(pl.lit("anonymous"))
        .when(form == _CALLER_FORMS.index("empty")).then(pl.lit(""))
        .when(form == _CALLER_FORMS.index("masked")).then(pl.concat_str(pl.col("caller_tail").cast(pl.String).str.slice(0, 7), pl.lit("****")))
        .otherwise(written)
    )  # fmt: skip
    no_area = form.is_in([_CALLER_FORMS.index(f) for f in ("anonymous", "empty", "masked")])
    return calls.with_columns(
        switch=pl.when(pl.col("name").is_null()).then(switch).otherwise(pl.concat_str(switch, pl.lit("交换机"))),
        caller_area_code=caller_area,
        answer_area_code=answer_area,
        caller_dial=dial.gather(calls["caller_area"]),
        answer_dial=dial.gather(calls["answer_area"]),
    ).select(
        cdr_id=pl.format("{}-{}", "switch", pl.col("seq").cast(pl.String).str.zfill(8)),
        switch_id="switch",
        caller=caller,
        called=pl.col("called").cast(pl.String),
        answer_number=pl.when("answer_mobile")
        .then(pl.col("answer_tail").cast(pl.String))
        .otherwise(pl.concat_str("answer_dial", pl.col("answer_tail").cast(pl.String))),
        caller_area=pl.when(no_area).then(pl.lit("")).otherwise("caller_area_code"),
        answer_area="answer_area_code",
        start_time=_timestamp("start"),
        answer_time=pl.when(pl.col("answer") >= 0).then(_timestamp("answer")).otherwise(pl.lit("")),
        end_time=_timestamp("end"),
        billsec=pl.col("billsec").cast(pl.String),
        disposition=pl.Series(DISPOSITIONS).gather(calls["disposition"]),
        malformed="malformed",
        # What Asterisk writes beside them: UTC wall-clock times (usegmtime=yes), the
        # duration, the caller's name.
        start_local=_utc_wall_clock("start"),
        answer_local=pl.when(pl.col("answer") >= 0).then(_utc_wall_clock("answer")).otherwise(pl.lit("")),
        end_local=_utc_wall_clock("end"),
        duration=(pl.col("end") - pl.col("start")).cast(pl.String),
        seq="seq",
        name=pl.col("name").fill_null(caller),
    )


def _utc_wall_clock(column: str) -> pl.Expr:
    """UTC wall-clock time of a local (Asia/Shanghai, as if UTC) epoch: what Asterisk with
    the shipped ``usegmtime=yes`` writes."""
    return pl.from_epoch(pl.col(column) - 8 * 3600, time_unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")


def _asterisk_lines(calls: pl.DataFrame) -> pl.Series:
    """The calls as Asterisk cdr_csv Master.csv lines (loguniqueid=yes, loguserfield=yes),
    quoted as cdr_csv.c quotes them: text in quotes (a quote doubled), integers bare, an
    unset time empty and bare.

    The broken ones are broken as in the canonical file: 22 columns (a missing one would
    be the 17-column layout, and 19-21 are layouts too), a time not in the switch's
    format, a negative billsec, a misspelt disposition.
    """
    fields = _call_fields(calls)
    kind = pl.col("malformed")
    answered = pl.col("answer_local") != ""
    quoted = {
        "accountcode": pl.lit(""),
        "src": pl.col("caller"),
        "dst": pl.col("called"),
        "dcontext": pl.lit("from-trunk"),
        "clid": pl.format('"{}" <{}>', "name", "caller"),
        "channel": pl.format("SIP/trunk-{}", pl.col("seq").cast(pl.String).str.zfill(8)),
        "dstchannel": pl.when(answered)
        .then(pl.format("SIP/out-{}", pl.col("seq").cast(pl.String).str.zfill(8)))
        .otherwise(pl.lit("")),
        "lastapp": pl.lit("Dial"),
        "lastdata": pl.format("SIP/out/{},60", "answer_number"),
        "start": pl.when(kind == 1 + _MALFORMED_KINDS.index("timestamp_without_offset"))
        .then(pl.col("start_local").str.replace(" ", "T", literal=True))
        .otherwise("start_local"),
        "answer": pl.col("answer_local"),
        "end": pl.col("end_local"),
        "duration": pl.col("duration"),
        "billsec": pl.when(kind == 1 + _MALFORMED_KINDS.index("negative_billsec"))
        .then(pl.format("-{}", pl.max_horizontal(pl.col("billsec").cast(pl.Int64), 1)))
        .otherwise("billsec"),
        "disposition": pl.when(kind == 1 + _MALFORMED_KINDS.index("misspelt_disposition"))
        .then(pl.lit("ANSWERD"))
        .otherwise("disposition"),
        "amaflags": pl.lit("DOCUMENTATION"),
        "uniqueid": pl.col("cdr_id"),
        "userfield": pl.col("answer_number"),
        # null is skipped by concat_str(ignore_nulls=True), separator included: 18 fields,
        # or 22 for a broken line (19-21 are layouts of newcdrcolumns=yes).
        "extra": pl.when(kind == 1 + _MALFORMED_KINDS.index("missing_column")).then(pl.lit('"x","x","x","x"')).otherwise(None),
    }
    bare = {"duration", "billsec", "extra"}
    escaped = [
        expr.alias(name)
        if name in bare
        else pl.when((expr == "") & pl.lit(name == "answer"))
        .then(pl.lit(""))
        .otherwise(pl.concat_str(pl.lit('"'), expr.str.replace_all('"', '""', literal=True), pl.lit('"')))
        .alias(name)
        for name, expr in quoted.items()
    ]
    return fields.select(pl.concat_str(escaped, separator=",", ignore_nulls=True).alias("line")).to_series()


def _timestamp(column: str) -> pl.Expr:
    return pl.from_epoch(column, time_unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S" + _UTC_OFFSET)


def _broken_lines(fields: pl.DataFrame) -> pl.Series:
    """The lines of spec 4 step 1 that a switch or an export script gets wrong."""
    kind = pl.col("malformed")
    missing_column = 1 + _MALFORMED_KINDS.index("missing_column")
    no_offset = 1 + _MALFORMED_KINDS.index("timestamp_without_offset")
    negative = 1 + _MALFORMED_KINDS.index("negative_billsec")
    misspelt = 1 + _MALFORMED_KINDS.index("misspelt_disposition")
    return fields.with_columns(
        # null is skipped by concat_str(ignore_nulls=True), separator included: 11 fields.
        answer_number=pl.when(kind == missing_column).then(None).otherwise("answer_number"),
        start_time=pl.when(kind == no_offset)
        .then(pl.col("start_time").str.slice(0, 19).str.replace("T", " ", literal=True))
        .otherwise("start_time"),
        billsec=pl.when(kind == negative)
        # "-0" would still parse as a valid 0, so an unanswered call gets "-1".
        .then(pl.format("-{}", pl.max_horizontal(pl.col("billsec").cast(pl.Int64), 1)))
        .otherwise("billsec"),
        disposition=pl.when(kind == misspelt).then(pl.lit("ANSWERD")).otherwise("disposition"),
    ).select(pl.concat_str(CDR_COLUMNS, separator=",", ignore_nulls=True).alias("line")).to_series()
