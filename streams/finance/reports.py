"""Finance's reports over ClickHouse: statements, revenue, missed calls, usage (issue 6).

Every query reads the deduplicated data: ``FINAL`` on the ReplacingMergeTree tables (or a
month of a view that is one merged part, :func:`grouped_by_day_range`), so a
call or event inserted twice (a replay) counts once and a rerated call counts at its
highest version (docs/finance.md says why and shows the SQL). Money comes back as integer
units of 0.0001 CNY and durations as whole seconds; :class:`Report` formats them at the
edge (4-decimal strings, minutes with 2 decimals rounded half up).

Months and days are the plan's: ``local_day`` (and ``month`` of billing events) are in the
account plan's timezone, so a month here is the month of the account's invoices.

The functions take a ``clickhouse_driver.Client`` of the database holding the tables (a
plain client, not the sink's numpy one), e.g. the read-only ``finance`` user's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta, timezone
from typing import Any, Literal

from clickhouse_driver import Client

from schemas.area_names import area_names
from schemas.money import format_money
from streams.finance.retention import is_settled

RevenueBy = Literal["day", "segment", "class", "plan", "account"]
#: ``revenue --as``: the calls as corrected (their current versions), or as first billed.
RevenueAs = Literal["corrected", "billed"]
MissedBy = Literal["hour", "number"]
UsageBy = Literal["day", "hour", "duration", "origin"]

#: ``--by`` of ``revenue`` -> the column of ``calls_by_day`` it groups by.
REVENUE_KEYS: Mapping[str, str] = {
    "day": "local_day",
    "segment": "segment",
    "class": "class",
    "plan": "plan_id",
    "account": "account_id",
}
#: The duration buckets of ``usage --by duration``: label, lowest billsec in it.
DURATION_BUCKETS: tuple[tuple[str, int], ...] = (
    ("<30 s", 0),
    ("30-60 s", 30),
    ("1-3 min", 60),
    ("3-10 min", 180),
    (">10 min", 600),
)
#: Dispositions of a missed call (not answered; CONGESTION is a failed call).
MISSED_DISPOSITIONS = ("NO ANSWER", "BUSY", "FAILED", "CONGESTION")

#: Ledger event kind -> statement line kind (spec/ledger.md; issue 6). Other kinds carry
#: no money; one that did anyway would show as ``other`` so the closing balance still adds up.
LINE_KINDS: Mapping[str, str] = {
    "RentCharged": "rent",
    "ServiceFeeCharged": "services",
    "MinimumSpendTrueUp": "minimum_spend_true_up",
    "AccountOpened": "fees",
    "NumberAssigned": "fees",
    "KeepNumberFeeCharged": "fees",
    "TopUpReceived": "top_ups",
    "SlaCreditGranted": "credits",
    "RefundIssued": "refunds",
    "CallRerated": "corrections",
    # issue 23: term packages; forfeited credit is the breakage
    "PackagePurchased": "package",
    "PackageRenewed": "package",
    "PackageCreditExpired": "breakage",
    "EarlyTerminationCharged": "early_termination",
}
#: The order of a statement's lines: calls first, then these kinds.
LINE_ORDER = (
    "calls", "corrections", "rent", "services", "minimum_spend_true_up", "package", "early_termination", "fees",
    "top_ups", "credits", "refunds", "breakage", "other",
)
_DESCRIPTIONS: Mapping[str, str] = {
    "RentCharged": "monthly rent",
    "ServiceFeeCharged": "service fee",
    "MinimumSpendTrueUp": "minimum spend true-up",
    "AccountOpened": "opening fee",
    "NumberAssigned": "number assignment fee",
    "KeepNumberFeeCharged": "keep-number fee",
    "TopUpReceived": "top-up",
    "SlaCreditGranted": "SLA credit",
    "RefundIssued": "refund",
    "PackagePurchased": "package bought",
    "PackageRenewed": "package renewed",
    "PackageCreditExpired": "package credit ended",
    "EarlyTerminationCharged": "early termination",
}


class ReportError(ValueError):
    """A report cannot be made: a bad month or date range, an unknown account."""


@dataclass(frozen=True)
class Report:
    """Rows of a report, with which columns are money (units) and which are seconds.

    ``rows()`` gives them for people and scripts: money as 4-decimal strings, seconds as
    minutes with 2 decimals (strings: exact, no float), the rest as they are.
    """

    title: str
    columns: tuple[str, ...]
    raw_rows: list[dict[str, Any]]
    money: frozenset[str] = frozenset({"amount"})
    minutes: frozenset[str] = frozenset({"minutes"})
    right_aligned: frozenset[str] = field(default_factory=frozenset)

    def rows(self) -> list[dict[str, Any]]:
        """The rows, formatted (money and minutes as exact decimal strings)."""
        return [{name: self._cell(name, row[name]) for name in self.columns} for row in self.raw_rows]

    def _cell(self, name: str, value: Any) -> Any:
        if name in self.money:
            return format_money(int(value))
        if name in self.minutes:
            return format_minutes(int(value))
        if isinstance(value, date):
            return value.isoformat()
        return value


def format_minutes(seconds: int) -> str:
    """Seconds as minutes with 2 decimals, rounded half up (exact: integers only).

    Examples
    --------
    >>> format_minutes(90), format_minutes(61), format_minutes(0)
    ('1.50', '1.02', '0.00')
    """
    hundredths = (2 * seconds * 100 + 60) // 120  # round_half_up(seconds * 100 / 60)
    return f"{hundredths // 100}.{hundredths % 100:02d}"


def month_range(month: str) -> tuple[date, date]:
    """The first day of ``YYYY-MM`` and the first day of the next month.

    Examples
    --------
    >>> month_range("2026-12")
    (datetime.date(2026, 12, 1), datetime.date(2027, 1, 1))
    """
    try:
        year, number = (int(part) for part in month.split("-"))
        first = date(year, number, 1)
    except ValueError:
        raise ReportError(f"--month: expected YYYY-MM (e.g. 2026-03), got {month!r}") from None
    if len(month) != 7:
        raise ReportError(f"--month: expected YYYY-MM (e.g. 2026-03), got {month!r}")
    following = date(year + number // 12, number % 12 + 1, 1)
    return first, following


# ------------------------------------------------------------------------------ statement


def statement(client: Client, account_id: str, month: str) -> dict[str, Any]:
    """The account's statement of ``month``: opening balance, every charge and credit of
    the month by kind, closing balance (money in units; signed: + credit, - charge).

    ``opening_balance`` is everything before the month: the balance the account was
    opened with plus every event amount, minus every call amount (and the totals that
    ``cdrflow retention`` kept of dropped months). In the month the account was opened,
    the balance it was opened with is the opening balance. ``closing_balance`` is
    ``opening_balance`` plus the lines. ``calls_amount`` is what the month's calls cost
    (positive); the call lines carry it negated, one line per call class.

    Package credit (issue 23) is the statement's second column: each line also says what
    it did to the credit (``credit``: a call's part drawn on it, a package's grant, the
    credit that ended: the ``breakage`` line when forfeited), and ``opening_credit`` plus
    the lines' credit is ``closing_credit``. A line's ``amount`` is what moved the balance:
    a call drawn wholly on credit has amount 0 there and its price in ``credit``.

    Calls count **as billed** (their first rating; a call a correction rated, billed as a
    rejection, not at all): a correction is a line of the month it was applied in, one per
    correction and month of the calls it corrected (docs/rules.md "Corrections"), so a
    statement once issued does not change.

    Raises
    ------
    ReportError
        A bad month, or an account with no call and no event in ClickHouse.
    """
    first, following = month_range(month)
    where = {"account": account_id, "first": first, "next": following, "month": month}
    calls_before, credit_used_before, calls_seen = client.execute(
        "SELECT sumIf(amount, local_day < %(first)s), sumIf(credit_used, local_day < %(first)s), count() "
        "FROM rated_calls FINAL WHERE account_id = %(account)s",
        where,
    )[0]
    events_before, opened_with, events_seen, corrected_before, credit_before = client.execute(
        "SELECT sumIf(opening_balance + amount, month < %(month)s), "
        "sumIf(opening_balance, month = %(month)s), count(), "
        "sumIf(amount, kind = 'CallRerated' AND substring(reference, 1, 7) < %(month)s), "
        "sumIf(credit_change, month < %(month)s) "
        "FROM billing_events FINAL WHERE account_id = %(account)s",
        where,
    )[0]
    retained, retained_credit = client.execute(
        "SELECT sum(amount), sum(credit_used) FROM retained_call_totals FINAL "
        "WHERE account_id = %(account)s AND month < %(month)s",
        where,
    )[0]
    by_class = calls_as_billed(client, account_id, first, following)
    events = client.execute(
        "SELECT kind, local_day, amount, reference, detail, event_id, credit_change FROM billing_events FINAL "
        "WHERE account_id = %(account)s AND month = %(month)s "
        "AND (amount != 0 OR credit_change != 0 OR kind = 'CallRerated') "
        "ORDER BY effective_time, effective_us, event_id",
        where,
    )
    if not calls_seen and not events_seen:
        raise ReportError(f"--account: account {account_id!r} has no calls and no ledger events in ClickHouse")

    lines: list[dict[str, Any]] = []
    for call_class, (calls, billable_s, amount, credit_used) in sorted(by_class.items()):
        lines.append(
            {
                "kind": "calls",
                "description": f"{call_class.replace('_', ' ')} calls: {calls} calls, {format_minutes(billable_s)} min",
                "amount": -(amount - credit_used),
                "credit": -credit_used,
                "class": call_class,
                "calls": calls,
                "minutes": billable_s,
            }
        )
    corrections: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, local_day, amount, reference, detail, event_id, credit_change in events:
        if kind == "CallRerated":
            # One line per correction and month of calls; the event id ends with the correction's id.
            key = (event_id.rsplit("/", 1)[-1], reference[:7])
            line = corrections.setdefault(key, {
                "kind": "corrections", "amount": 0, "credit": 0, "calls": 0, "correction_id": key[0],
                "calls_month": key[1], "local_day": local_day,
            })
            line["amount"] += amount
            line["calls"] += 1
            continue
        words = _DESCRIPTIONS.get(kind, kind)
        about = "; ".join(part for part in (reference, detail) if part)
        lines.append(
            {
                "kind": LINE_KINDS.get(kind, "other"),
                "description": f"{local_day.isoformat()} {words}" + (f" ({about})" if about else ""),
                "amount": amount,
                "credit": credit_change,
            }
        )
    for line in corrections.values():
        day = line.pop("local_day")
        line["description"] = (
            f"{day.isoformat()} correction {line['correction_id']} of {line['calls']} call(s) of {line['calls_month']}"
        )
        lines.append(line)
    lines.sort(key=lambda line: LINE_ORDER.index(line["kind"]))  # stable: dates stay in order
    # Calls before the month as billed: their current amounts less what corrections added;
    # what they drew on package credit left the credit, not the balance.
    opening = (
        opened_with + events_before - (calls_before + corrected_before) - (retained or 0)
        + credit_used_before + (retained_credit or 0)
    )
    opening_credit = credit_before - credit_used_before - (retained_credit or 0)
    calls_amount = sum(amount for _, _, amount, _ in by_class.values())
    return {
        "account_id": account_id,
        "month": month,
        "opening_balance": opening,
        "closing_balance": opening + sum(line["amount"] for line in lines),
        "opening_credit": opening_credit,
        "closing_credit": opening_credit + sum(line["credit"] for line in lines),
        "calls_amount": calls_amount,
        "lines": lines,
    }


def calls_as_billed(client: Client, account_id: str, first: date, following: date) -> dict[str, list[int]]:
    """Class -> [calls, billable seconds, amount, credit used] of the account's rated calls
    of local days ``[first, following)`` as first billed: the current version of calls
    never corrected, the first-rating version (rated_call_versions, version 0) of corrected
    ones. What a call drew on package credit is the same in every version (a correction
    moves the balance only, docs/rules.md), so it is read from the current one."""
    where = {"account": account_id, "first": first, "next": following}
    days = "local_day >= %(first)s AND local_day < %(next)s AND status = 'rated'"
    found: dict[str, list[int]] = {}
    for call_class, calls, billable_s, amount, credit_used in client.execute(
        f"SELECT class, count(), sum(billable_s), sum(amount), sum(credit_used) FROM rated_calls FINAL "
        f"WHERE account_id = %(account)s AND {days} "
        "AND cdr_id NOT IN (SELECT cdr_id FROM rated_call_versions WHERE account_id = %(account)s) GROUP BY class",
        where,
    ) + client.execute(
        f"SELECT class, count(), sum(billable_s), sum(amount), 0 FROM rated_call_versions FINAL "
        f"WHERE account_id = %(account)s AND version = 0 AND {days} GROUP BY class",
        where,
    ) + client.execute(
        f"SELECT class, 0, 0, 0, sum(credit_used) FROM rated_calls FINAL WHERE account_id = %(account)s AND {days} "
        "AND cdr_id IN (SELECT cdr_id FROM rated_call_versions WHERE account_id = %(account)s AND version = 0) "
        "GROUP BY class",
        where,
    ):
        totals = found.setdefault(call_class, [0, 0, 0, 0])
        for index, value in enumerate((calls, billable_s, amount, credit_used)):
            totals[index] += int(value)
    return found


def statement_json(statement_: Mapping[str, Any]) -> dict[str, Any]:
    """The statement with money as 4-decimal strings and minutes as 2-decimal strings."""
    money = ("opening_balance", "closing_balance", "calls_amount", "opening_credit", "closing_credit")
    lines = []
    for line in statement_["lines"]:
        shown = {**line, "amount": format_money(line["amount"]), "credit": format_money(line.get("credit", 0))}
        if "minutes" in line:
            shown["minutes"] = format_minutes(line["minutes"])
        lines.append(shown)
    return {
        **{key: (format_money(value) if key in money else value) for key, value in statement_.items()},
        "lines": lines,
    }


# ------------------------------------------------------- exact reads of the day-ordered views


def grouped_by_day_range(
    client: Client,
    table: str,
    keys: str,
    sums: str,
    where: str,
    params: Mapping[str, Any],
    first: date,
    following: date,
) -> dict[tuple[Any, ...], list[int]]:
    """``SELECT keys, sums FROM table WHERE local_day in [first, following) AND where
    GROUP BY keys``, exact in spite of replays: key tuple -> the sums.

    ``table`` is a view partitioned by the month of ``local_day`` (``calls_by_day``,
    ``missed_calls``) and ``sums`` must be additive (``count()``, ``sum(x)``), so that the
    answers for parts of the range add up. A month that is one merged part (``level >
    0``: the merge collapsed its copies, and it holds the whole month) is *settled* and
    read without FINAL, which is several times faster; the other months are read with
    FINAL. Parts never change: if the settled months still are those same parts after the
    read, the read saw exactly them; else the whole range is read again with FINAL.
    ``cdrflow retention`` settles past months (docs/finance.md).
    """
    params = {**params, "first": first, "following": following}
    extra = f" AND {where}" if where else ""
    before = _month_parts(client, table, first, following)
    settled = sorted(month for month, (names, levels) in before.items() if is_settled(len(names), max(levels)))
    unsettled = sorted(month for month in before if month not in settled)

    def read(final: bool, months: list[int]) -> list[tuple[Any, ...]]:
        if not months:
            return []
        return client.execute(
            f"SELECT {keys}, {sums} FROM {table}{' FINAL' if final else ''} "
            f"WHERE local_day >= %(first)s AND local_day < %(following)s "
            f"AND toYYYYMM(local_day) IN ({', '.join(map(str, months))}){extra} GROUP BY {keys}",
            params,
        )

    rows = read(False, settled) + read(True, unsettled)
    after = _month_parts(client, table, first, following)
    if any(after.get(month, ((), ()))[0] != before[month][0] for month in settled):
        # A late call landed in a settled month while reading: read it all with FINAL.
        rows = read(True, sorted(after))
    key_count = len(_split_top_level(keys))
    totals: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        key, values = tuple(row[:key_count]), row[key_count:]
        if key in totals:
            totals[key] = [a + b for a, b in zip(totals[key], values, strict=True)]
        else:
            totals[key] = list(values)
    return totals


def _month_parts(client: Client, table: str, first: date, following: date) -> dict[int, tuple[list[str], list[int]]]:
    """The active parts of each month (``YYYYMM``) of ``table`` that overlaps
    ``[first, following)``: names, levels."""
    last = following - timedelta(days=1)
    rows = client.execute(
        "SELECT partition, groupArray(name), groupArray(level) FROM system.parts "
        "WHERE database = currentDatabase() AND table = %(table)s AND active GROUP BY partition",
        {"table": table},
    )
    parts = {}
    for partition, names, levels in rows:
        month = int(str(partition).strip("'"))
        if first.year * 100 + first.month <= month <= last.year * 100 + last.month:
            order = sorted(range(len(names)), key=names.__getitem__)
            parts[month] = ([names[i] for i in order], [levels[i] for i in order])
    return parts


def _split_top_level(expressions: str) -> list[str]:
    """``a, f(b, c)`` -> ``['a', 'f(b, c)']``: commas outside brackets."""
    parts, depth, current = [], 0, ""
    for char in expressions:
        depth += char in "(["
        depth -= char in ")]"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


# -------------------------------------------------------------------------------- revenue


def revenue(client: Client, start: date, end: date, by: RevenueBy, as_: RevenueAs = "corrected") -> Report:
    """Rated calls from ``start`` to ``end`` (local days, both included) grouped by ``by``:
    ``calls`` (rated calls), ``minutes`` (billable seconds), ``amount``; then, when package
    credit was forfeited in those days, a last line ``breakage`` with its amount.

    ``as_``: ``corrected`` counts each call at its current version (corrections restate
    the days of the calls); ``billed`` at its first rating (a call a correction rated,
    billed as a rejection, not at all).
    """
    if end < start:
        raise ReportError(f"--to {end} is before --from {start}")
    key = REVENUE_KEYS[by]
    found = grouped_by_day_range(
        client, "calls_by_day", key, "count(), sum(billable_s), sum(amount)", "status = 'rated'", {},
        start, end + timedelta(days=1),
    )
    if as_ == "billed":
        for group, change in _as_billed(client, key, start, end + timedelta(days=1)).items():
            totals = [a + b for a, b in zip(found.get(group, [0, 0, 0]), change, strict=True)]
            if any(totals):
                found[group] = totals
            else:
                found.pop(group, None)
    rows = [
        {by: k, "calls": calls, "minutes": seconds, "amount": amount}
        for (k,), (calls, seconds, amount) in sorted(found.items())
    ]
    forfeited = breakage(client, start, end)
    if forfeited:  # issue 23: forfeited package credit is revenue of its own line
        rows.append({by: BREAKAGE, "calls": 0, "minutes": 0, "amount": forfeited})
    return Report(
        f"revenue {start} to {end} by {by}" + (" as billed" if as_ == "billed" else ""),
        (by, "calls", "minutes", "amount"),
        rows,
    )


#: The key of revenue's line of forfeited package credit, whatever it is grouped by.
BREAKAGE = "breakage"


def breakage(client: Client, start: date, end: date) -> int:
    """Package credit forfeited on local days ``start`` to ``end`` (both included): what
    ``PackageCreditExpired`` events took from the credit and did not give to the balance."""
    return int(
        client.execute(
            "SELECT sum(-(credit_change + amount)) FROM billing_events FINAL "
            "WHERE kind = 'PackageCreditExpired' AND local_day >= %(first)s AND local_day <= %(last)s",
            {"first": start, "last": end},
        )[0][0]
        or 0
    )


def _as_billed(client: Client, key: str, first: date, following: date) -> dict[tuple[Any, ...], list[int]]:
    """What turns the corrected figures of ``calls_by_day`` into the billed ones, per group:
    each corrected call's current version out, its first rating (version 0) in."""
    key_sql = "substring(called, 1, 4)" if key == "segment" else key
    rows = client.execute(
        f"SELECT account_id, cdr_id, version, status, {key_sql}, billable_s, amount FROM rated_call_versions FINAL "
        "WHERE local_day >= %(first)s AND local_day < %(next)s",
        {"first": first, "next": following},
    )
    latest: dict[tuple[str, str], tuple[Any, ...]] = {}
    change: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        call, version = (row[0], row[1]), row[2]
        if version == 0 and row[3] == "rated":
            totals = change.setdefault((row[4],), [0, 0, 0])
            for index, value in enumerate((1, row[5], row[6])):
                totals[index] += int(value)
        if call not in latest or version > latest[call][2]:
            latest[call] = row
    for row in latest.values():
        if row[3] == "rated":
            totals = change.setdefault((row[4],), [0, 0, 0])
            for index, value in enumerate((1, row[5], row[6])):
                totals[index] -= int(value)
    return change


def daily_revenue_by_class(client: Client, month: str) -> list[tuple[date, str, int]]:
    """(local day, class, amount) of the month's rated calls (the HTML report's chart)."""
    first, following = month_range(month)
    found = grouped_by_day_range(
        client, "calls_by_day", "local_day, class", "sum(amount)", "status = 'rated'", {}, first, following
    )
    return [(day, call_class, amount) for (day, call_class), (amount,) in sorted(found.items())]


# --------------------------------------------------------------------------- missed calls


def missed_calls(client: Client, month: str, by: MissedBy, account_id: str | None = None) -> Report:
    """Calls not answered in the month (NO ANSWER, BUSY, FAILED, CONGESTION) by local hour
    of day (all 24 hours, zeros included) or by the 400 number called (most missed first)."""
    first, following = month_range(month)
    key = {"hour": "local_hour", "number": "called"}[by]
    account = "account_id = %(account)s" if account_id else ""
    found = grouped_by_day_range(
        client, "missed_calls", key, "count()", account, {"account": account_id}, first, following
    )
    rows = [(k, missed) for (k,), (missed,) in found.items()]
    if by == "hour":
        counts = dict(rows)
        raw = [{"hour": hour, "missed": counts.get(hour, 0)} for hour in range(24)]
    else:
        raw = [{"number": number, "missed": missed} for number, missed in sorted(rows, key=lambda r: (-r[1], r[0]))]
    scope = f" of {account_id}" if account_id else ""
    return Report(f"missed calls{scope} in {month} by {by}", (by, "missed"), raw, money=frozenset(), minutes=frozenset())


# ---------------------------------------------------------------------------------- transfers


def transfers(client: Client, start: date | None = None, end: date | None = None, account_id: str | None = None) -> Report:
    """Numbers moved between accounts (issue 25), from the ``NumberTransferred`` event on
    the log of the account each left (``transferred_to`` names the other): number, from,
    to, the instant (UTC) from which its calls bill the new account, and whether the new
    account's log has taken it (``done``; ``waiting`` while its worker has not folded it).
    ``start``/``end``: local days of the instant, both included; ``account_id``: either side."""
    where = ["kind = 'NumberTransferred'", "transferred_to != ''"]
    if start is not None:
        where.append("local_day >= %(start)s")
    if end is not None:
        where.append("local_day <= %(end)s")
    if account_id:
        where.append("(account_id = %(account)s OR transferred_to = %(account)s)")
    rows = client.execute(
        "SELECT reference, account_id, transferred_to, effective_time, effective_us, local_day, "
        "concat(transferred_to, substring(event_id, length(account_id) + 1)) AS taken "
        f"FROM billing_events FINAL WHERE {' AND '.join(where)} ORDER BY effective_time, effective_us, reference",
        {"start": start, "end": end, "account": account_id},
    )
    taken = {r[0] for r in client.execute(
        "SELECT event_id FROM billing_events FINAL WHERE kind = 'NumberTransferred' AND transferred_to = ''")}
    raw = [
        {
            "number": number,
            "from": source,
            "to": target,
            "at": at.replace(tzinfo=timezone.utc, microsecond=int(us)).isoformat(),
            "local_day": day,
            "status": "done" if key in taken else "waiting",
        }
        for number, source, target, at, us, day, key in rows
    ]
    scope = f" of {account_id}" if account_id else ""
    return Report(f"number transfers{scope}", ("number", "from", "to", "at", "local_day", "status"), raw,
                  money=frozenset(), minutes=frozenset())


# ---------------------------------------------------------------------------------- usage


def usage(client: Client, month: str, by: UsageBy, account_id: str | None = None) -> Report:
    """Answered calls of the month and their talk minutes (billsec), per local day, hour
    of day, duration bucket or caller area (with its city and province)."""
    first, following = month_range(month)
    key = {
        "day": "local_day",
        "hour": "local_hour",
        "duration": _bucket_sql(),
        "origin": "caller_area",
    }[by]
    account = " AND account_id = %(account)s" if account_id else ""
    grouped = grouped_by_day_range(
        client, "calls_by_day", key, "count(), sum(billsec)", f"disposition = 'ANSWERED'{account}",
        {"account": account_id}, first, following,
    )
    scope = f" of {account_id}" if account_id else ""
    title = f"usage{scope} in {month} by {by}"
    found = {k: (calls, seconds) for (k,), (calls, seconds) in sorted(grouped.items())}
    if by == "hour":
        raw = [{"hour": h, "calls": found.get(h, (0, 0))[0], "minutes": found.get(h, (0, 0))[1]} for h in range(24)]
        return Report(title, ("hour", "calls", "minutes"), raw, money=frozenset())
    if by == "duration":
        raw = [
            {"bucket": label, "calls": found.get(index, (0, 0))[0], "minutes": found.get(index, (0, 0))[1]}
            for index, (label, _) in enumerate(DURATION_BUCKETS)
        ]
        return Report(title, ("bucket", "calls", "minutes"), raw, money=frozenset())
    if by == "origin":
        raw = []
        for area, (calls, seconds) in sorted(found.items(), key=lambda item: (-item[1][0], item[0])):
            city, province = area_names(area)
            raw.append({"area": area, "city": city, "province": province, "calls": calls, "minutes": seconds})
        return Report(title, ("area", "city", "province", "calls", "minutes"), raw, money=frozenset())
    raw = [{"day": day, "calls": calls, "minutes": seconds} for day, (calls, seconds) in found.items()]
    return Report(title, ("day", "calls", "minutes"), raw, money=frozenset())


def _bucket_sql() -> str:
    # The index of the bucket (0..4): sorts as the buckets do.
    bounds = [low for _, low in DURATION_BUCKETS[1:]]
    return "multiIf(" + ", ".join(f"billsec < {low}, {index}" for index, low in enumerate(bounds)) + f", {len(bounds)})"


# ------------------------------------------------------------------------------------ tax


def tax(client: Client, start: date, end: date) -> Report:
    """Output VAT for the tax return (issue 24): the lines of invoices, credit notes and
    debit notes issued on local days ``start`` to ``end`` (both included), per month of
    issue, VAT category and rate: documents, ``gross``, ``tax`` and ``net`` (a note's
    negative lines reduce its month's figures)."""
    if end < start:
        raise ReportError(f"--to {end} is before --from {start}")
    rows = client.execute(
        "SELECT toYYYYMM(issued_day) AS issued, category, rate, uniqExact(invoice_no), "
        "sum(gross), sum(tax), sum(net) FROM invoice_lines FINAL "
        "WHERE issued_day >= %(first)s AND issued_day <= %(last)s "
        "GROUP BY issued, category, rate ORDER BY issued, category, rate DESC",
        {"first": start, "last": end},
    )
    return Report(
        f"output VAT of the documents issued {start} to {end}",
        ("month", "category", "rate", "documents", "gross", "tax", "net"),
        [
            {"month": f"{int(month) // 100:04d}-{int(month) % 100:02d}", "category": category, "rate": rate, "documents": int(documents), "gross": int(gross),
             "tax": int(vat), "net": int(net)}
            for month, category, rate, documents, gross, vat, net in rows
        ],
        money=frozenset({"gross", "tax", "net"}),
        minutes=frozenset(),
    )


# -------------------------------------------------------------------------------- rejects


def rejects_by_reason(client: Client, month: str) -> list[tuple[str, int]]:
    """Rejected lines that landed in the month (UTC), by reason, most first."""
    first, following = month_range(month)
    return client.execute(
        "SELECT reason, count() AS lines FROM rejected_cdrs FINAL "
        "WHERE landed_time >= toDateTime(%(first)s, 'UTC') AND landed_time < toDateTime(%(next)s, 'UTC') "
        "GROUP BY reason ORDER BY lines DESC, reason",
        {"first": f"{first} 00:00:00", "next": f"{following} 00:00:00"},
    )
