"""A plain-Python reading of spec/rating.md sections 3-5, to hold the polars engine to.

One loop over the CDRs in log order, one account state per account, integer arithmetic
only (money in units of 0.0001 CNY). It is written to be read next to the spec, not to
be fast, and deliberately shares no code with ``rating/`` or ``schemas/cdr_csv.py``.

Decisions for what the spec leaves open (agreed with the engine):

- malformed (spec 4.1): a time must be ``YYYY-MM-DDTHH:MM:SS[.fff]`` followed by ``Z``,
  ``+HH:MM`` or ``+HHMM``; ``billsec`` is 1 to 9 ASCII digits; the disposition is
  matched exactly; a field holding NUL or U+FFFD, or a line longer than 4096 UTF-8 bytes,
  is malformed too.
- Every CDR that passed steps 1-2 is remembered for the duplicate check, even when it is
  later rejected or unbilled, with its kind: a CDR that would be billed (ANSWERED,
  billsec > 0) is a duplicate only of an earlier one that would have been billed; an
  unbilled one of any earlier one (several records of one call, docs/rules.md).
- A charge time before 2001-01-01 or from 2100-01-01 (UTC) is ``invalid_time``, judged
  right after step 2: it moves no watermark and is not remembered.
- A billed CDR whose billsec exceeds the seconds from answer to end by more than 1 is
  ``invalid_time``.
- A caller without an area (``caller_area`` empty) is of the class its plan version's
  ``unknown_caller_class`` says (``long_distance`` when no version is in force).
- The horizon (docs/rules.md): an account's watermark is the latest local charge month of
  the CDRs of its log that passed steps 1-2, the current one included; a CDR whose month
  is before ``watermark - horizon_months`` is ``late`` (checked after step 2, not
  remembered), and a duplicate needs an earlier id remembered with a month of at least
  ``watermark - horizon_months``.
- ``daily_cap_reached`` is raised on the first rated call of an account's day after
  which ``spent >= cap`` while the call's pre-cap price was above 0.
- A time-of-day ``t`` is inside a window ``[s, e)`` when ``s <= t < e`` for ``s < e``,
  and when ``t >= s or t < e`` for ``e <= s`` (so ``s == e`` is the whole day).
- A rate of class ``*`` matches every class; of two rates of one segment, the call's own
  class wins; a call a ``*`` rate prices uses the allowance, international or not.
- Package credit (issue 23): an account on a plan whose version in force at its opening
  has a package starts with ``opening_balance - price`` and the package's credit until
  the end of its term. A rated call takes its amount from the credit first. At the first
  rated or unbilled call whose charge time is at or after the end, the credit left ends
  before the call: forfeited, or added to the balance (``unused = "refund"``).
  ``low_balance`` and ``arrears`` judge credit + balance (the funds) before and after the
  call; a row's ``balance`` is the balance alone.
- A transferred number (issue 25) bills the account that held it at the call's charge
  time.
- ``unusual_calls`` (issue 25): over an account's rated calls that the catalogue's rule
  counts (class, local hours of the charge time), in log order, a call is in a burst when
  it and the ``count - 1`` counted calls before it span less than ``window_minutes``; the
  alert comes at a call in a burst whose counted call before was not, after the others.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from tariffs import Account, Plan, PlanVersion, Rate, Tariffs
from tariffs.catalogue import UnusualCalls
from tariffs.models import opening_package

DISPOSITIONS = frozenset({"ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION"})
MAX_LINE_BYTES = 4096
FIELD_COUNT = 12

_ISO_WITH_OFFSET = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?"
    r"(Z|[+-][0-9]{2}:?[0-9]{2})"
)
_BILLSEC = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class _Cdr:
    cdr_id: str
    called: str
    caller_area: str
    answer_area: str
    start: datetime
    answer: datetime | None
    end: datetime
    billsec: int
    disposition: str


EARLIEST_CALL = datetime(2001, 1, 1, tzinfo=timezone.utc)
LATEST_CALL = datetime(2100, 1, 1, tzinfo=timezone.utc)
BILLSEC_TOLERANCE_S = 1


@dataclass
class _AccountState:
    balance: int
    credit: int = 0
    credit_ends: datetime | None = None
    credit_refund: bool = False
    #: cdr_id -> the charge month (year * 12 + month - 1) it was remembered with, for
    #: records that would be billed, and for unbilled ones
    seen_cdr_ids: dict[str, int] = field(default_factory=dict)
    seen_unbilled_ids: dict[str, int] = field(default_factory=dict)
    watermark: int | None = None
    allowance_used_s: dict[tuple[int, int], int] = field(default_factory=dict)
    charged_s: dict[tuple[int, int, str], int] = field(default_factory=dict)
    spent_today: dict[date, int] = field(default_factory=dict)
    cap_alerted_days: set[date] = field(default_factory=set)
    #: charge times of the calls the unusual_calls rule counted, in log order
    counted: list[datetime] = field(default_factory=list)


def _parse_time(text: str) -> datetime | None:
    match = _ISO_WITH_OFFSET.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7), match.group(8)
    microsecond = int((fraction or "0")[:6].ljust(6, "0"))
    if offset == "Z":
        tz = timezone.utc
    else:
        digits = offset[1:].replace(":", "")
        off_hours, off_minutes = int(digits[:2]), int(digits[2:])
        if off_hours > 23 or off_minutes > 59:
            return None
        sign = -1 if offset[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=off_hours, minutes=off_minutes))
    try:
        return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=tz)
    except ValueError:  # 2026-02-30, 24:00:00, ...
        return None


def _parse_cdr(fields: list[str] | None) -> _Cdr | None:
    """Spec 4 step 1: the CDR, or None when it is malformed."""
    if fields is None or len(fields) != FIELD_COUNT:
        return None
    if any("\x00" in f or "\ufffd" in f for f in fields):
        return None
    if len(",".join(fields).encode("utf-8")) > MAX_LINE_BYTES:
        return None
    (cdr_id, _switch, _caller, called, _answer_number, caller_area, answer_area,
     start_text, answer_text, end_text, billsec_text, disposition) = fields
    if cdr_id == "" or disposition not in DISPOSITIONS:
        return None
    if _BILLSEC.fullmatch(billsec_text) is None:
        return None
    start, end = _parse_time(start_text), _parse_time(end_text)
    answer = _parse_time(answer_text) if answer_text != "" else None
    if start is None or end is None or (answer_text != "" and answer is None):
        return None
    return _Cdr(cdr_id, called, caller_area, answer_area, start, answer, end,
                int(billsec_text), disposition)


def _billed(cdr: _Cdr) -> bool:
    return cdr.disposition == "ANSWERED" and cdr.billsec > 0


def _invalid_time(cdr: _Cdr) -> bool:
    """Spec 4 step 4, and a billsec longer than the call."""
    if cdr.end < cdr.start:
        return True
    if cdr.answer is not None and not (cdr.start <= cdr.answer <= cdr.end):
        return True
    if cdr.disposition == "ANSWERED" and cdr.answer is None:
        return True
    return (
        _billed(cdr)
        and cdr.answer is not None
        and cdr.billsec > (cdr.end - cdr.answer).total_seconds() + BILLSEC_TOLERANCE_S
    )


def _call_class(cdr: _Cdr, version: PlanVersion | None) -> str:
    """Spec 4 step 5; a caller without an area by the version's rule."""
    if cdr.caller_area == "":
        return version.unknown_caller_class if version is not None else "long_distance"
    if cdr.caller_area.startswith(("+", "00")):
        return "international"
    return "local" if cdr.caller_area == cdr.answer_area else "long_distance"


def _version_at(plan: Plan, instant: datetime) -> PlanVersion | None:
    """Spec 2.1: the version with the latest ``effective_from <= instant``."""
    in_force = None
    for version in plan.versions:  # sorted by effective_from
        if version.effective_from <= instant:
            in_force = version
    return in_force


def _period_version(plan: Plan, start: datetime, end: datetime) -> PlanVersion | None:
    """Spec 4 "Month and day versions": in force at ``start``, else the first in [start, end)."""
    in_force = _version_at(plan, start)
    if in_force is not None:
        return in_force
    return next((v for v in plan.versions if start <= v.effective_from < end), None)


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(timezone.utc)


def _month_bounds(local: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    first = date(local.year, local.month, 1)
    following = date(local.year + local.month // 12, local.month % 12 + 1, 1)
    return _local_midnight(first, zone), _local_midnight(following, zone)


def _day_bounds(local: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    day = local.date()
    return _local_midnight(day, zone), _local_midnight(day + timedelta(days=1), zone)


def _matching_rate(version: PlanVersion, called: str, call_class: str) -> Rate | None:
    """Spec 2.1: the longest segment that is ``*`` or a prefix of the called number."""
    candidates = [
        rate for rate in version.rates
        if rate.call_class in (call_class, "*") and (rate.segment == "*" or called.startswith(rate.segment))
    ]
    return max(candidates, key=lambda rate: (rate.segment_length, rate.call_class != "*"), default=None)


def _opening_state(account: Account, plan: Plan) -> _AccountState:
    bought = opening_package(account, plan)
    if bought is None:
        return _AccountState(balance=account.opening_balance)
    package, ends = bought
    return _AccountState(balance=account.opening_balance - package.price, credit=package.granted,
                         credit_ends=ends, credit_refund=package.unused == "refund")


def _end_credit(state: _AccountState, charge_time: datetime) -> None:
    """The credit left ends at the first call at or after its end."""
    if state.credit_ends is not None and charge_time >= state.credit_ends:
        if state.credit_refund:
            state.balance += state.credit
        state.credit, state.credit_ends = 0, None


def _counted(rule: UnusualCalls, call_class: str, local: datetime) -> bool:
    """Whether a rated call counts for the unusual_calls rule: its class, its local hour."""
    if call_class not in rule.classes:
        return False
    if rule.hours is None:
        return True
    start_s, end_s = rule.hours
    t = local.hour * 3600 + local.minute * 60 + local.second
    return start_s <= t < end_s if start_s < end_s else (t >= start_s or t < end_s)


def _in_burst(times: list[datetime], rule: UnusualCalls) -> bool:
    """The last ``count`` counted calls (log order) span less than the window."""
    last = times[-rule.count:]
    return len(last) == rule.count and max(last) - min(last) < timedelta(minutes=rule.window_minutes)


def _billable_s(billsec: int, first: int, next_: int) -> int:
    if billsec <= first:
        return first
    return first + -(-(billsec - first) // next_) * next_


def _tiered_raw(rate: Rate, month_charged_s: int, charged_s: int) -> int:
    """Sum of per_minute units x seconds over the seconds [C, C + charged_s) of the month."""
    call_end = month_charged_s + charged_s
    raw = 0
    lower_s = 0
    for tier in rate.tiers:
        upper_s = call_end if tier.up_to_minutes is None else tier.up_to_minutes * 60
        overlap = min(call_end, upper_s) - max(month_charged_s, lower_s)
        if overlap > 0:
            raw += tier.per_minute * overlap
        lower_s = upper_s
    return raw


def _round_half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def _is_offpeak(version: PlanVersion, local: datetime) -> bool:
    offpeak = version.offpeak
    if offpeak is None:
        return False
    if offpeak.weekends and local.weekday() >= 5:
        return True
    if local.date() in offpeak.holidays:
        return True
    t = local.hour * 3600 + local.minute * 60 + local.second
    for start_s, end_s in offpeak.windows:
        if start_s < end_s and start_s <= t < end_s:
            return True
        if end_s <= start_s and (t >= start_s or t < end_s):
            return True
    return False


def _rated_row(line: int, cdr: _Cdr, account_id: str, status: str, call_class: str,
               state: _AccountState, **numbers: int | bool) -> dict:
    row: dict = {
        "line": line, "cdr_id": cdr.cdr_id, "account_id": account_id, "status": status,
        "class": call_class, "offpeak": False, "billable_s": 0, "allowance_s": 0,
        "charged_s": 0, "base": 0, "discount": 0, "minimum_uplift": 0, "cap_waived": 0,
        "amount": 0, "balance": state.balance, "credit_used": 0, "credit": state.credit,
    }
    row.update(numbers)
    return row


def rate_reference(
    tariffs: Tariffs, rows: Iterable[tuple[int, list[str] | None]], horizon_months: int = 1
) -> tuple[list[dict], list[dict], list[dict]]:
    """Rate CDRs in log order (spec 3-5) and return ``(rated, rejected, alerts)``.

    ``rows`` holds ``(line_number, fields)``: the 12 raw fields of spec 2.3, or None for
    a line that is malformed before it could be split into them. Money is in units.
    Rated and alert dicts also carry the ``line`` they came from.
    """
    accounts: dict[str, Account] = {account.id: account for account in tariffs.accounts}
    owner_of = tariffs.account_of_number()
    chains = tariffs.owners()
    rule = tariffs.rules.unusual_calls
    states = {account.id: _opening_state(account, tariffs.plans[account.plan])
              for account in tariffs.accounts}
    rated: list[dict] = []
    rejected: list[dict] = []
    alerts: list[dict] = []

    def reject(line: int, cdr_id: str, reason: str) -> None:
        rejected.append({"line": line, "cdr_id": cdr_id, "reason": reason})

    for line, fields in rows:
        cdr = _parse_cdr(fields)
        if cdr is None:
            reject(line, fields[0] if fields else "", "malformed")
            continue
        account_id = owner_of.get(cdr.called)
        if cdr.called in chains:  # issue 25: a transferred number bills whoever held it then
            charged_at = cdr.answer if cdr.answer is not None else cdr.start
            account_id = [holder for since, holder in chains[cdr.called] if since is None or since <= charged_at][-1]
        if account_id is None:
            reject(line, cdr.cdr_id, "unknown_number")
            continue
        state = states[account_id]
        account = accounts[account_id]
        plan = tariffs.plans[account.plan]
        zone = ZoneInfo(plan.timezone)
        charge_time = cdr.answer if cdr.answer is not None else cdr.start
        if not EARLIEST_CALL <= charge_time < LATEST_CALL:
            reject(line, cdr.cdr_id, "invalid_time")
            continue
        local = charge_time.astimezone(zone)
        month_key = local.year * 12 + local.month - 1
        state.watermark = month_key if state.watermark is None else max(state.watermark, month_key)
        oldest_judged = state.watermark - horizon_months
        if month_key < oldest_judged:
            reject(line, cdr.cdr_id, "late")
            continue
        billed = _billed(cdr)
        blocking = [state.seen_cdr_ids] if billed else [state.seen_cdr_ids, state.seen_unbilled_ids]
        if any(memory.get(cdr.cdr_id, oldest_judged - 1) >= oldest_judged for memory in blocking):
            reject(line, cdr.cdr_id, "duplicate")
            continue
        # decision: remembered even if rejected below or unbilled.
        (state.seen_cdr_ids if billed else state.seen_unbilled_ids)[cdr.cdr_id] = month_key
        if _invalid_time(cdr):
            reject(line, cdr.cdr_id, "invalid_time")
            continue

        version = _version_at(plan, charge_time)
        call_class = _call_class(cdr, version)

        if cdr.disposition != "ANSWERED" or cdr.billsec == 0:
            _end_credit(state, charge_time)
            rated.append(_rated_row(line, cdr, account_id, "unbilled", call_class, state))
            continue

        rate = _matching_rate(version, cdr.called, call_class) if version is not None else None
        if version is None or rate is None:
            reject(line, cdr.cdr_id, "no_rate")
            continue

        month_start, month_end = _month_bounds(local, zone)
        month_version = _period_version(plan, month_start, month_end)
        day_start, day_end = _day_bounds(local, zone)
        day_version = _period_version(plan, day_start, day_end)
        assert month_version is not None and day_version is not None  # v itself qualifies
        month = (local.year, local.month)
        day = local.date()

        _end_credit(state, charge_time)
        billable_s = _billable_s(cdr.billsec, version.increment.first, version.increment.next)
        allowance_s = 0
        if call_class != "international" or rate.call_class == "*":
            used_s = state.allowance_used_s.get(month, 0)
            allowance_s = min(billable_s, max(0, month_version.included_minutes * 60 - used_s))
            state.allowance_used_s[month] = used_s + allowance_s
        charged_s = billable_s - allowance_s

        month_charged_s = state.charged_s.get((*month, call_class), 0)
        base = _round_half_up(_tiered_raw(rate, month_charged_s, charged_s), 60)
        state.charged_s[(*month, call_class)] = month_charged_s + charged_s

        offpeak = _is_offpeak(version, local)
        discount = 0
        if offpeak and version.offpeak is not None:
            discount = _round_half_up(base * version.offpeak.discount_percent, 100)

        minimum_uplift = 0
        if charged_s > 0 and version.per_call_minimum is not None:
            minimum_uplift = max(0, version.per_call_minimum - (base - discount))

        pre_cap = base - discount + minimum_uplift
        cap = account.daily_cap if account.daily_cap is not None else day_version.daily_cap
        spent = state.spent_today.get(day, 0)
        amount = pre_cap if cap is None else min(pre_cap, max(0, cap - spent))
        state.spent_today[day] = spent + amount

        before = state.balance + state.credit  # the funds: credit + balance
        credit_used = min(state.credit, amount)
        state.credit -= credit_used
        state.balance -= amount - credit_used
        after = state.balance + state.credit
        rated.append(_rated_row(
            line, cdr, account_id, "rated", call_class, state,
            offpeak=offpeak, billable_s=billable_s, allowance_s=allowance_s,
            charged_s=charged_s, base=base, discount=discount,
            minimum_uplift=minimum_uplift, cap_waived=pre_cap - amount, amount=amount,
            credit_used=credit_used,
        ))

        # spec 5: alerts of one call in the order daily_cap_reached, low_balance, arrears.
        kinds = []
        if (cap is not None and day not in state.cap_alerted_days
                and spent + amount >= cap and pre_cap > 0):
            state.cap_alerted_days.add(day)
            kinds.append("daily_cap_reached")
        threshold = account.low_balance_threshold
        if before >= threshold > after:
            kinds.append("low_balance")
        if before >= 0 > after:
            kinds.append("arrears")
        if rule is not None and _counted(rule, call_class, local):
            state.counted.append(charge_time)
            if _in_burst(state.counted, rule) and not _in_burst(state.counted[:-1], rule):
                kinds.append("unusual_calls")
        alerts.extend({"line": line, "account_id": account_id, "kind": kind,
                       "cdr_id": cdr.cdr_id, "balance": state.balance} for kind in kinds)

    return rated, rejected, alerts


def split_csv_lines(data: str | bytes) -> list[tuple[int, list[str] | None, str]]:
    """Data lines of a canonical CSV as ``(line_number, fields or None, raw first field)``.

    Line 1 is the header. One trailing ``\\r`` per line is dropped; a line that is not
    UTF-8 or does not split into 12 comma-separated fields gets None.
    """
    raw_lines = data.split(b"\n" if isinstance(data, bytes) else "\n")
    if raw_lines and not raw_lines[-1]:
        raw_lines.pop()  # the file's final line ending
    out: list[tuple[int, list[str] | None, str]] = []
    for index, raw in enumerate(raw_lines[1:], start=2):
        if isinstance(raw, bytes):
            raw = raw.removesuffix(b"\r")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                out.append((index, None, raw.split(b",")[0].decode("utf-8", "replace")))
                continue
        else:
            text = raw.removesuffix("\r")
        # Standard CSV quoting is honoured ("sw,1" is one field; docs/rules.md).
        try:
            fields = next(csv.reader([text], strict=True)) if '"' in text else text.split(",")
        except csv.Error:
            out.append((index, None, text.split(",")[0]))
            continue
        out.append((index, fields if len(fields) == FIELD_COUNT else None, fields[0] if fields else ""))
    return out


def rate_reference_csv(
    tariffs: Tariffs, data: str | bytes, horizon_months: int = 1
) -> tuple[list[dict], list[dict], list[dict]]:
    """:func:`rate_reference` over a canonical CSV text (header on line 1)."""
    lines = split_csv_lines(data)
    rated, rejected, alerts = rate_reference(tariffs, [(n, fields) for n, fields, _ in lines], horizon_months)
    first_field = {n: first for n, _, first in lines}
    for row in rejected:
        row["cdr_id"] = first_field[row["line"]]  # spec 6: the raw first field
    return rated, rejected, alerts
