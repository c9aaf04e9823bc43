"""Hypothesis strategies: random but valid tariffs and canonical CDR logs (spec/rating.md 2).

The log is produced as CSV text so that the engine and the reference read the same
bytes. Values are kept small on purpose (allowances of a few minutes, tiers ending after
1-8 minutes, caps and balances of a few CNY) so that allowances run out, tiers are
crossed inside one call, caps bind and alerts fire within a 60-line log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import cached_property
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from schemas.columns import CDR_HEADER
from schemas.money import format_money
from tariffs import Account, Plan, Tariffs
from tariffs.catalogue import CatalogueRules
from tariffs.models import Transfer

TIMEZONES = ("Asia/Shanghai", "UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata",
             "Australia/Adelaide")
INCREMENTS = ((60, 60), (6, 6), (30, 6), (1, 1))
SEGMENTS = ("*", "400", "4008", "40080")
CLASSES = ("local", "long_distance", "international")
#: A rate's class may also be "*": every class (issue 23).
RATE_CLASSES = (*CLASSES, "*")
#: 400 numbers whose longest matching segment differs: 40080..., 4008..., 400...
NUMBER_POOL = ("4008012345", "4008099999", "4008123456", "4008765432", "4001234567",
               "4007003333", "4006001234", "4000800001")
UNKNOWN_NUMBERS = ("4009999999", "4000000000")
AREAS = ("010", "021", "0755")
INTERNATIONAL_AREAS = ("+1", "0044", "001", "+86")
#: CDR instants fall in this span (about two months, three local month starts).
PERIOD_START = datetime(2026, 1, 25, tzinfo=timezone.utc)
PERIOD_DAYS = 65
CLOCKS = ("00:00", "06:59", "07:00", "08:00", "12:00", "13:30", "22:00", "23:00", "23:59")
MONTH_STARTS = (date(2026, 2, 1), date(2026, 3, 1), date(2026, 3, 31))
OFFSETS = ("+08:00", "Z", "-05:00", "+0800")
DISPOSITIONS_NOT_ANSWERED = ("NO ANSWER", "BUSY", "FAILED", "CONGESTION")


def _offset_zone(text: str) -> timezone:
    if text == "Z":
        return timezone.utc
    digits = text[1:].replace(":", "")
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return timezone(-delta if text[0] == "-" else delta)


def format_instant(instant: datetime, offset: str, fraction: str = "") -> str:
    """ISO 8601 text of ``instant`` written with ``offset`` (``Z``, ``+08:00``, ``+0800``)."""
    local = instant.astimezone(_offset_zone(offset))
    return local.strftime("%Y-%m-%dT%H:%M:%S") + fraction + offset


@st.composite
def local_instants(draw: st.DrawFn, zone_name: str | None = None) -> datetime:
    """An instant near something that matters: a local midnight, a window edge, a month start."""
    zone = ZoneInfo(zone_name or draw(st.sampled_from(TIMEZONES)))
    day = draw(st.one_of(
        st.sampled_from(MONTH_STARTS),
        st.integers(0, PERIOD_DAYS).map(lambda d: PERIOD_START.date() + timedelta(days=d)),
    ))
    hour, minute = map(int, draw(st.sampled_from(CLOCKS)).split(":"))
    local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
    return (local + timedelta(seconds=draw(st.integers(-3, 3)))).astimezone(timezone.utc)


def instants(zone_name: str | None = None) -> st.SearchStrategy[datetime]:
    uniform = st.integers(0, PERIOD_DAYS * 86400).map(
        lambda s: PERIOD_START + timedelta(seconds=s)
    )
    return st.one_of(uniform, local_instants(zone_name))


# --- tariffs ---------------------------------------------------------------------------

prices = st.one_of(
    st.sampled_from(["0.0000", "0.0001", "0.0333", "0.10", "0.1133", "0.15", "0.2150", "1.80"]),
    st.integers(0, 30_000).map(format_money),
)
small_money = st.one_of(st.sampled_from([0, 1, 500, 1000, 5000, 10_000]), st.integers(0, 30_000))


@st.composite
def tiers(draw: st.DrawFn) -> list[dict]:
    bounds = sorted(draw(st.sets(st.integers(1, 8), max_size=2)))
    steps = [{"up_to_minutes": bound, "per_minute": draw(prices)} for bound in bounds]
    return steps + [{"per_minute": draw(prices)}]


@st.composite
def offpeak_tables(draw: st.DrawFn) -> dict:
    clock = st.one_of(
        st.sampled_from(CLOCKS),
        st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59)),
    )
    holidays = st.lists(
        st.integers(0, PERIOD_DAYS).map(lambda d: PERIOD_START.date() + timedelta(days=d)),
        max_size=3,
    )
    return {
        "discount_percent": draw(st.one_of(st.sampled_from([0, 25, 30, 33, 50, 100]),
                                           st.integers(0, 100))),
        # includes windows wrapping midnight (end < start) and start == end
        "windows": draw(st.lists(st.lists(clock, min_size=2, max_size=2), max_size=2)),
        "weekends": draw(st.booleans()),
        "holidays": draw(holidays),
    }


@st.composite
def rates(draw: st.DrawFn) -> list[dict]:
    out = []
    for call_class in RATE_CLASSES:
        # international and "*" may have no rate at all (-> no_rate); the others usually have one
        least = 0 if call_class in ("international", "*") else draw(st.sampled_from([0, 1, 1, 1]))
        for segment in draw(st.sets(st.sampled_from(SEGMENTS), min_size=least, max_size=3)):
            out.append({"segment": segment, "class": call_class, "tiers": draw(tiers())})
    return out


@st.composite
def plan_versions(draw: st.DrawFn, effective_from: datetime) -> dict:
    first, next_ = draw(st.sampled_from(INCREMENTS))
    version: dict = {
        "effective_from": effective_from,
        "included_minutes": draw(st.sampled_from([0, 0, 1, 2, 3, 5, 10])),
        "increment": {"first": first, "next": next_},
        "rates": draw(rates()),
    }
    if draw(st.booleans()):
        version["per_call_minimum"] = format_money(draw(small_money))
    if draw(st.booleans()):
        version["daily_cap"] = format_money(draw(small_money))
    if draw(st.integers(0, 3)):
        version["offpeak"] = draw(offpeak_tables())
    if draw(st.integers(0, 2)) == 0:
        version["package"] = draw(packages())
    if draw(st.integers(0, 2)) == 0:
        version["unknown_caller_class"] = draw(st.sampled_from(CLASSES))
    return version


@st.composite
def packages(draw: st.DrawFn) -> dict:
    """A term package (issue 23): short terms, so that credit ends inside the log."""
    package: dict = {"price": format_money(draw(small_money)), "term_months": draw(st.sampled_from([1, 1, 2]))}
    if draw(st.booleans()):
        package["credit"] = format_money(draw(small_money))
    if draw(st.booleans()):
        package["unused"] = draw(st.sampled_from(["forfeit", "refund"]))
    return package


@st.composite
def plans(draw: st.DrawFn, plan_id: str) -> dict:
    zone_name = draw(st.sampled_from(TIMEZONES))
    zone = ZoneInfo(zone_name)
    always = PERIOD_START - timedelta(days=40)
    starts = draw(st.lists(st.one_of(st.just(always), instants(zone_name)),
                           min_size=1, max_size=3, unique=True))
    versions = []
    for start in starts:
        # written with a fixed offset, as a TOML datetime is (sometimes the local one)
        shown = start.astimezone(draw(st.sampled_from([zone, _offset_zone("+08:00"), timezone.utc])))
        shown = shown.astimezone(timezone(shown.utcoffset()))  # type: ignore[arg-type]
        versions.append(draw(plan_versions(shown)))
    return {"id": plan_id, "name": f"Plan {plan_id}", "timezone": zone_name, "versions": versions}


@st.composite
def account_sets(draw: st.DrawFn, plan_ids: list[str]) -> list[dict]:
    count = draw(st.integers(2, 4))
    pool = list(draw(st.permutations(NUMBER_POOL)))
    accounts = []
    for index in range(count):
        how_many = draw(st.integers(1, min(3, len(pool) - (count - index - 1))))
        numbers, pool = pool[:how_many], pool[how_many:]
        account: dict = {
            "id": f"A{index + 1:03d}",
            "plan": draw(st.sampled_from(plan_ids)),
            "numbers": numbers,
            "opening_balance": format_money(draw(st.integers(-10_000, 50_000))),
            "low_balance_threshold": format_money(draw(st.integers(0, 30_000))),
        }
        if draw(st.booleans()):
            account["daily_cap"] = format_money(draw(small_money))
        if draw(st.booleans()):  # opened inside the log: a package's credit may end in it
            account["opened_at"] = draw(instants()).astimezone(_offset_zone("+08:00"))
        accounts.append(account)
    return accounts


# --- CDR logs --------------------------------------------------------------------------

MALFORMATIONS = (
    "too_few_fields", "too_many_fields", "empty_cdr_id", "space_not_t", "no_offset",
    "impossible_date", "bad_answer_time", "negative_billsec", "text_billsec", "ten_digit_billsec",
    "lowercase_disposition", "nul_byte", "replacement_char", "line_too_long",
)


def _malform(fields: list[str], how: str) -> str:
    """The CSV line of ``fields`` broken in one of the ways spec 4.1 (and our decisions) reject."""
    f = list(fields)
    if how == "too_few_fields":
        return ",".join(f[:-1])
    if how == "too_many_fields":
        return ",".join(f + ["extra"])
    if how == "empty_cdr_id":
        f[0] = ""
    elif how == "space_not_t":
        f[7] = f[7].replace("T", " ")
    elif how == "no_offset":
        f[7] = f[7][:19]
    elif how == "impossible_date":
        f[7] = "2026-02-30T10:00:00+08:00"
    elif how == "bad_answer_time":
        f[8] = "soon"
    elif how == "negative_billsec":
        f[10] = "-5"
    elif how == "text_billsec":
        f[10] = "abc"
    elif how == "ten_digit_billsec":
        f[10] = "1234567890"
    elif how == "lowercase_disposition":
        f[11] = "answered"
    elif how == "nul_byte":
        f[2] = "1380013\x008000"
    elif how == "replacement_char":
        f[1] = "sw\ufffd1"
    elif how == "line_too_long":
        f[1] = "s" * 4100
    return ",".join(f)


def _pad_to_bytes(fields: list[str], size: int) -> list[str]:
    """Pad switch_id so the line is exactly ``size`` UTF-8 bytes (the 4096 boundary)."""
    length = len(",".join(fields).encode("utf-8"))
    return [fields[0], fields[1] + "p" * max(0, size - length), *fields[2:]]


@st.composite
def cdr_lines(draw: st.DrawFn, called_numbers: list[str], cdr_ids: list[str]) -> str:
    kind = draw(st.sampled_from(
        ["answered"] * 8 + ["unanswered", "zero_billsec", "unknown", "invalid_time",
                            "malformed", "boundary_length", "long_billsec", "far_time"]
    ))
    called = draw(st.sampled_from(UNKNOWN_NUMBERS if kind == "unknown" else called_numbers))
    international = draw(st.integers(0, 4)) == 0
    # an empty caller area: a caller without one (withheld), rated by unknown_caller_class
    caller_area = draw(st.sampled_from(INTERNATIONAL_AREAS if international else (*AREAS, "")))
    answer_area = draw(st.sampled_from(AREAS))
    offset = draw(st.sampled_from(OFFSETS))
    fraction = draw(st.sampled_from(["", "", "", ".250", ".999999"]))
    start = draw(instants())
    if kind == "far_time":  # a switch clock gone wrong: outside the times rated
        start = start.replace(year=draw(st.sampled_from([1999, 2000, 2100, 2107])))
    answer: datetime | None = start + timedelta(seconds=draw(st.integers(0, 30)))
    billsec = draw(st.one_of(
        st.integers(1, 400),
        st.sampled_from([1, 5, 6, 7, 29, 30, 31, 36, 59, 60, 61, 119, 120, 121, 300]),
        st.integers(400, 4000),
    ))
    disposition = "ANSWERED"
    if kind == "unanswered":
        disposition = draw(st.sampled_from(DISPOSITIONS_NOT_ANSWERED))
        billsec = draw(st.sampled_from([0, 0, 12]))
        if draw(st.integers(0, 3)):
            answer = None
    elif kind == "zero_billsec":
        billsec = 0
    end = (answer or start) + timedelta(seconds=billsec)
    if kind == "long_billsec":  # billsec more than the call lasted (1 s is tolerated)
        end -= timedelta(seconds=draw(st.sampled_from([1, 2, 3, 60])))
    if kind == "invalid_time":
        how = draw(st.sampled_from(["end_before_start", "answer_before_start",
                                    "answer_after_end", "answered_without_answer"]))
        if how == "end_before_start":
            end = start - timedelta(seconds=draw(st.integers(1, 100)))
            answer = None if draw(st.booleans()) else answer
        elif how == "answer_before_start":
            answer = start - timedelta(seconds=1)
        elif how == "answer_after_end":
            answer = end + timedelta(seconds=1)
        else:
            answer = None

    def text(instant: datetime | None) -> str:
        return "" if instant is None else format_instant(instant, offset, fraction)

    switch = draw(st.sampled_from(["sw1", "sw-bj1", "交换机"]))
    fields = [draw(st.sampled_from(cdr_ids)), switch, "13800138000", called, "01088886666",
              caller_area, answer_area, text(start), text(answer), text(end), str(billsec),
              disposition]
    if kind == "malformed":
        return _malform(fields, draw(st.sampled_from(MALFORMATIONS)))
    if kind == "boundary_length":
        return ",".join(_pad_to_bytes(fields, draw(st.sampled_from([4096, 4097]))))
    return ",".join(fields)


@dataclass(frozen=True)
class Scenario:
    """Plans and accounts (as the dicts a TOML file would hold) and a CDR log as CSV text."""

    plan_dicts: list[dict]
    account_dicts: list[dict]
    csv_text: str
    #: months before an account's latest charge month still judged (rating.horizon)
    horizon_months: int = 1
    #: catalogue.toml (issue 25: the unusual_calls rule), as its dict; None: no file
    rules: dict | None = None
    #: [[transfers]] of the accounts file (issue 25), as their dicts
    transfers: tuple[dict, ...] = ()

    @cached_property
    def tariffs(self) -> Tariffs:
        plans = [Plan.model_validate(p) for p in self.plan_dicts]
        accounts = tuple(Account.model_validate(a) for a in self.account_dicts)
        return Tariffs(
            plans={plan.id: plan for plan in plans}, accounts=accounts,
            rules=CatalogueRules.model_validate(self.rules or {}),
            transfers=tuple(Transfer.model_validate(t) for t in self.transfers),
        )

    @property
    def csv_bytes(self) -> bytes:
        return self.csv_text.encode("utf-8")


@st.composite
def scenarios(draw: st.DrawFn, max_rows: int = 60) -> Scenario:
    """Random valid tariffs and a CDR log of 0-``max_rows`` lines over 2-4 accounts."""
    plan_ids = [f"p{i}" for i in range(draw(st.integers(1, 3)))]
    plan_dicts = [draw(plans(plan_id)) for plan_id in plan_ids]
    account_dicts = draw(account_sets(plan_ids))
    numbers = [n for account in account_dicts for n in account["numbers"]]
    row_count = draw(st.integers(0, max_rows))
    # few distinct ids, so that duplicates (and one id on two accounts) are common
    cdr_ids = [f"C{i:03d}" for i in range(max(1, row_count))]
    lines = [draw(cdr_lines(numbers, cdr_ids)) for _ in range(row_count)]
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join([CDR_HEADER, *lines]) + draw(st.sampled_from([newline, ""]))
    # The log spans three local months: 0 and 1 make late calls common, 2 rare.
    horizon_months = draw(st.sampled_from([0, 1, 1, 2]))
    rules = draw(st.one_of(st.none(), unusual_calls_rules()))
    transfers = draw(st.one_of(st.just(()), number_transfers(account_dicts)))
    return Scenario(plan_dicts=plan_dicts, account_dicts=account_dicts, csv_text=text, horizon_months=horizon_months,
                    rules=rules, transfers=transfers)


@st.composite
def unusual_calls_rules(draw: st.DrawFn) -> dict:
    """catalogue.toml with an unusual_calls rule small enough to fire in a short log."""
    rule: dict = {
        "count": draw(st.integers(2, 3)),
        "window_minutes": draw(st.sampled_from([1, 60, 1440, 44_640, 44_640])),
        "classes": draw(st.lists(st.sampled_from(CLASSES), min_size=1, max_size=3, unique=True)),
    }
    if draw(st.booleans()):
        rule["hours"] = [draw(st.sampled_from(CLOCKS)), draw(st.sampled_from(CLOCKS))]
    return {"unusual_calls": rule}


@st.composite
def number_transfers(draw: st.DrawFn, account_dicts: list[dict]) -> tuple[dict, ...]:
    """One or two transfers of one number between the accounts (issue 25); the accounts'
    lists are changed in place so that the last owner lists it, as a valid file would."""
    giver = draw(st.sampled_from(account_dicts))
    number = draw(st.sampled_from(giver["numbers"]))
    holder, transfers = giver, []
    for instant in sorted(draw(st.lists(instants(), min_size=1, max_size=2, unique=True))):
        taker = draw(st.sampled_from([a for a in account_dicts if a is not holder]))
        transfers.append({"number": number, "from": holder["id"], "to": taker["id"], "at": instant.isoformat()})
        holder = taker
    giver["numbers"] = [n for n in giver["numbers"] if n != number]
    holder["numbers"] = [*[n for n in holder["numbers"] if n != number], number]
    return tuple(transfers)
