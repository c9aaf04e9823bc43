"""The ledger commands: check, publish on the account's log, wait, read back.

A command is checked against what ClickHouse holds of the account (the worker's
projections: ``account_balances``, ``billing_events``), so that bad input is refused
before anything is written; the worker's fold (``rating.ledger``) applies the same rules
again, so the log stays right even when two commands race. After publishing, a command
waits until the worker has folded it (``account_balances.version`` reaches the command's
offset) and returns the events it produced.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

from clickhouse_driver import Client

from rating.ledger import month_bounds, month_version
from schemas.ledger import LedgerCommand
from schemas.money import format_money
from schemas.topics import ACCOUNTS, CDR_RAW
from streams.catalog.publish import read_catalog, read_grade_fees
from streams.clickhouse.query import query_client as client  # noqa: F401 - the commands connect through ops.client
from streams.kafka.client import BrokerError, encode_json, make_producer, topic_name
from streams.settings import Settings
from tariffs import Tariffs

log = logging.getLogger(__name__)

WAIT_S: Final[float] = 120.0


class LedgerRefused(Exception):
    """The command cannot be applied; nothing was written."""


@dataclass(frozen=True)
class Published:
    command: LedgerCommand
    partition: int
    offset: int


# ---------------------------------------------------------------------------- reads


def account_row(db: Client, account_id: str) -> dict[str, Any] | None:
    """The latest balance row of an account (None: the worker never folded it), with its
    package credit and when that ends ('' when it has none)."""
    rows = db.execute(
        "SELECT argMax(balance, version), argMax(state, version), argMax(plan_id, version), max(version), "
        "argMax(credit, version), argMax(credit_expires, version), argMax(next_step, version), "
        "argMax(next_step_at, version) "
        "FROM account_balances WHERE account_id = %(a)s GROUP BY account_id",
        {"a": account_id},
    )
    if not rows:
        return None
    balance, state, plan_id, version, credit, credit_expires, next_step, next_step_at = rows[0]
    return {"balance": int(balance), "state": state, "plan_id": plan_id, "version": int(version),
            "credit": int(credit), "credit_expires": credit_expires,
            # issue 25: the lifecycle's next deadline ('' when none)
            "next_step": next_step, "next_step_at": next_step_at}


def opened_at(db: Client, account_id: str) -> datetime | None:
    """When the account was opened (its AccountOpened event), None when not folded yet."""
    rows = db.execute(
        "SELECT effective_time, effective_us FROM billing_events FINAL "
        "WHERE account_id = %(a)s AND kind = 'AccountOpened'",
        {"a": account_id},
    )
    return rows[0][0].replace(tzinfo=timezone.utc, microsecond=int(rows[0][1])) if rows else None


def topup_amount(db: Client, ref: str) -> tuple[str, int] | None:
    """(account, amount) of the top-up recorded under a payment reference."""
    rows = db.execute(
        "SELECT account_id, amount FROM billing_events FINAL WHERE kind = 'TopUpReceived' AND reference = %(r)s",
        {"r": ref},
    )
    return (rows[0][0], int(rows[0][1])) if rows else None


def events_of(db: Client, account_id: str, *, offsets: list[int] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Billing events of an account in log order (those of given offsets, or the last ``limit``)."""
    where = "account_id = %(a)s"
    if offsets is not None:
        where += f" AND `offset` IN ({', '.join(str(int(o)) for o in offsets) or '-2'})"
    rows = db.execute(
        "SELECT event_id, kind, effective_time, effective_us, amount, opening_balance, balance, reference, detail, "
        f"`partition`, `offset`, credit_change, credit FROM billing_events FINAL WHERE {where}",
        {"a": account_id},
    )
    events = [
        {
            "event_id": r[0],
            "kind": r[1],
            "at": r[2].replace(tzinfo=timezone.utc, microsecond=int(r[3])),
            "amount": int(r[4]),
            "opening_balance": int(r[5]),
            "balance": int(r[6]),
            "reference": r[7],
            "detail": r[8],
            "offset": int(r[10]),
            "credit_change": int(r[11]),
            "credit": int(r[12]),
        }
        for r in rows
    ]
    events.sort(key=lambda e: (e["offset"], _KIND_ORDER.get(e["kind"], 50), e["at"], e["event_id"]))
    return events[-limit:] if limit else events


def event_order() -> dict[str, int]:
    """Event kind -> its rank among the events of one command, in the order the fold posts them."""
    return dict(_KIND_ORDER)


#: Within one command's message, the order the fold posts events in.
_KIND_ORDER: Final[dict[str, int]] = {
    k: i
    for i, k in enumerate(
        [
            "PackageCreditExpired", "RefundIssued", "NumberFrozen", "AccountClosed", "AccountOpened", "NumberAssigned",
            "KeepNumberEnded",
            "CancellationRequested", "KeepNumberStarted", "TopUpReceived", "ServiceEnabled", "ServiceDisabled",
            "MonthClosed", "RentCharged", "ServiceFeeCharged", "MinimumSpendTrueUp", "KeepNumberFeeCharged", "SlaCreditGranted",
            "CallRerated", "AccountSuspended", "AccountReactivated",
            # issue 23: the ending of a credit comes before the charges it precedes
            "PackagePurchased", "PackageRenewed", "EarlyTerminationCharged",
            # issue 24: a document is a command of its own
            "InvoiceIssued", "CreditNoteIssued", "DebitNoteIssued",
            # issue 25
            "NumberTransferred", "NumberReleased",
        ]
    )
}


def open_accounts(db: Client, month: str | None = None) -> list[str]:
    """Accounts the worker has folded that are not closed (month close runs over them);
    with ``month``, also those closed in it or later: the month an account was closed in
    (its numbers reclaimed, or the end of its frozen days, issue 25) is still closed for
    it, so that its invoice can be issued (issue 24)."""
    rows = db.execute(
        "SELECT account_id FROM account_balances GROUP BY account_id HAVING argMax(state, version) != 'closed' "
        "ORDER BY account_id"
    )
    found = {r[0] for r in rows}
    if month is not None:
        found.update(r[0] for r in db.execute(
            "SELECT DISTINCT account_id FROM billing_events WHERE kind = 'AccountClosed' AND month >= %(m)s",
            {"m": month},
        ))
    return sorted(found)


def account_view(db: Client, catalog: Tariffs, account_id: str, *, at: datetime | None = None) -> dict[str, Any]:
    """What ``account show`` prints: state, balance, the month's usage, services, events, alerts."""
    row = require_account(db, catalog, account_id)
    plan = catalog.plans.get(row["plan_id"])
    zone = plan.zone if plan else timezone.utc
    month = (at or now()).astimezone(zone).strftime("%Y-%m")
    start, end = month_bounds(month, zone)
    calls, amount, allowance = db.execute(
        "SELECT count(), sum(amount), sum(allowance_s) FROM rated_calls FINAL "
        "WHERE account_id = %(a)s AND status = 'rated' AND toYYYYMM(local_day) = %(m)s",
        {"a": account_id, "m": int(month.replace("-", ""))},
    )[0]
    included = 0
    if plan is not None:
        version = month_version(plan, start, end)
        included = version.included_minutes * 60 if version else 0
    events = events_of(db, account_id)
    services: dict[str, bool] = {}
    for event in events:
        if event["kind"] in ("ServiceEnabled", "ServiceDisabled"):
            services[event["reference"]] = event["kind"] == "ServiceEnabled"
    # Cancelled alerts (a correction took them back) are dropped after FINAL, not by a WHERE.
    alerts = [
        row[:4]
        for row in db.execute(
            "SELECT kind, local_day, balance, cdr_id, cancelled FROM alerts FINAL WHERE account_id = %(a)s "
            "ORDER BY local_day DESC, `offset` DESC",
            {"a": account_id},
        )
        if not row[4]
    ][:10]
    return {
        "account_id": account_id,
        "state": row["state"],
        "plan_id": row["plan_id"],
        "balance": row["balance"],
        "credit": row["credit"],
        "credit_expires": row["credit_expires"] or None,
        "next_step": row["next_step"] or None,
        "next_step_at": row["next_step_at"] or None,
        "month": month,
        "month_calls": int(calls),
        "month_calls_amount": int(amount or 0),
        "allowance_left_s": max(0, included - int(allowance or 0)),
        "services": sorted(name for name, on in services.items() if on),
        "recent_events": events[-10:],
        "alerts": [
            {"kind": k, "local_day": d.isoformat(), "balance": int(b), "cdr_id": c} for k, d, b, c in alerts
        ],
    }


def history(db: Client, account_id: str) -> list[dict[str, Any]]:
    """Every event of the account, calls included, in log order with the balance after each.

    Calls show as they were billed; a correction shows as its CallRerated events, where it
    was applied (a call a correction rated, billed as a rejection, only so).
    """
    calls = db.execute(
        "SELECT cdr_id, charge_time, charge_us, amount, balance, `offset`, line, status, credit FROM rated_calls FINAL "
        "WHERE account_id = %(a)s",
        {"a": account_id},
    )
    call_offsets = {int(row[5]) for row in calls}
    first_rated: dict[str, tuple[Any, ...]] = {}
    corrected: set[str] = set()
    for cdr_id, version, amount, balance, status in db.execute(
        "SELECT cdr_id, version, amount, balance, status FROM rated_call_versions FINAL WHERE account_id = %(a)s",
        {"a": account_id},
    ):
        corrected.add(cdr_id)
        if int(version) == 0:
            first_rated[cdr_id] = (amount, balance, status)
    rows = []
    for cdr_id, at, us, amount, balance, offset, line, status, credit in calls:
        if cdr_id in corrected:
            if cdr_id not in first_rated:
                continue
            amount, balance, status = first_rated[cdr_id]
        rows.append(
            {
                "kind": "CallRated" if status == "rated" else "CallUnbilled",
                "at": at.replace(tzinfo=timezone.utc, microsecond=int(us)),
                "amount": -int(amount),
                "balance": int(balance),
                "credit": int(credit),
                "reference": cdr_id,
                "_order": (int(offset), 0, int(line)),
            }
        )
    for index, event in enumerate(events_of(db, account_id)):
        rows.append(
            {
                "kind": event["kind"],
                "at": event["at"],
                "amount": event["amount"] + event["opening_balance"],
                "balance": event["balance"],
                "credit": event["credit"],
                "reference": event["reference"] or event["detail"],
                # a credit that ended at a call comes just before that call (its reference)
                "_order": (event["offset"], 0, _line_of(calls, event)) if event["kind"] == "PackageCreditExpired"
                and event["offset"] in call_offsets else (event["offset"], 1, index),
            }
        )
    rows.sort(key=lambda r: r["_order"])
    for r in rows:
        r.pop("_order")
    return rows


def _line_of(calls: list[tuple[Any, ...]], event: dict[str, Any]) -> float:
    """Where a credit that ended at a call goes in the history: just before the call of its
    message that folded it (the first call at or after its end)."""
    ends = event["at"].replace(microsecond=0)
    lines = [
        int(row[6]) for row in calls
        if int(row[5]) == event["offset"] and (row[1] if row[1].tzinfo else row[1].replace(tzinfo=timezone.utc)) >= ends
    ]
    return min(lines, default=0) - 0.5


def grade_fees(settings: Settings) -> Any:
    return read_grade_fees(settings, topic_prefix=settings.topic_prefix)


# ---------------------------------------------------------------------------- publish


#: Tries of a publish the broker refused whole (see :func:`publish`).
PUBLISH_TRIES: Final[int] = 3


def publish(settings: Settings, commands: list[LedgerCommand]) -> list[Published]:
    """Send commands to their accounts' logs; their (partition, offset) once acknowledged.

    A publish whose every record the broker refused stored none of them, so it is sent
    again (up to :data:`PUBLISH_TRIES` times): the embedded broker refuses one of two
    producers that write one partition at the same moment (docs/infra.md), e.g. two
    `cdrflow invoice` runs at once. A publish refused in part is not sent again (the
    records taken would be there twice): the error names the commands refused.
    """
    topic_prefix = settings.topic_prefix
    producer = make_producer(settings)
    try:
        attempt = 1
        while True:
            futures = [
                (c, producer.send(topic_name(CDR_RAW, topic_prefix), key=c.account_id.encode(), value=encode_json(c.message_value())))
                for c in commands
            ]
            producer.flush(timeout=60)
            refused = [(command, future.exception) for command, future in futures if future.failed()]
            if refused and len(refused) < len(futures):
                names = ", ".join(f"{c.kind} {c.command_id} of {c.account_id}" for c, _ in refused)
                raise BrokerError(
                    f"the broker took {len(futures) - len(refused)} of {len(futures)} commands and refused {names} "
                    f"({refused[0][1]}); run only those again"
                )
            if not refused or attempt == PUBLISH_TRIES:
                return [Published(command, *_where(future)) for command, future in futures]
            log.warning("the broker refused every ledger command of this publish (%r); sending them again", refused[0][1])
            time.sleep(0.5 * attempt)
            attempt += 1
    except Exception as error:
        raise BrokerError(f"could not publish the ledger command(s): {error}") from None
    finally:
        producer.close()


def _where(future: Any) -> tuple[int, int]:
    metadata = future.get(timeout=60)
    return metadata.partition, metadata.offset


def publish_account(settings: Settings, value: dict[str, Any]) -> None:
    """Put an account opened by command into the catalogue (routing and rating need it)."""
    topic_prefix = settings.topic_prefix
    producer = make_producer(settings)
    try:
        producer.send(topic_name(ACCOUNTS, topic_prefix), key=value["id"].encode(), value=encode_json(value)).get(timeout=60)
    finally:
        producer.close()


def wait_folded(db: Client, published: list[Published], *, timeout_s: float = WAIT_S) -> None:
    """Return once the worker has folded every published command (raises TimeoutError)."""
    wanted: dict[str, int] = {}
    for item in published:
        wanted[item.command.account_id] = max(item.offset, wanted.get(item.command.account_id, -1))
    wait_offsets_folded(db, wanted, timeout_s=timeout_s)


def wait_offsets_folded(db: Client, offsets: dict[str, int], *, timeout_s: float = WAIT_S) -> None:
    """Return once the worker has folded each account's log up to its offset, and the
    ledger events it counted have landed (raises TimeoutError)."""
    wanted = dict(offsets)
    deadline = time.monotonic() + timeout_s
    while wanted:
        rows = db.execute(
            "SELECT account_id, max(version), argMax(events, version) FROM account_balances "
            "WHERE account_id IN %(a)s GROUP BY account_id",
            {"a": tuple(wanted)},
        )
        folded = {a: int(n) for a, version, n in rows if int(version) >= wanted.get(a, 1 << 62)}
        if folded:
            # Each table lands through its own sink: wait for the events the fold counted.
            landed = dict(db.execute(
                "SELECT account_id, count() FROM billing_events FINAL WHERE account_id IN %(a)s GROUP BY account_id",
                {"a": tuple(folded)},
            ))
            for account_id, count in folded.items():
                if int(landed.get(account_id, 0)) >= count:
                    wanted.pop(account_id)
        if not wanted:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the worker has not folded the command(s) of {', '.join(sorted(wanted)[:5])} within "
                f"{timeout_s:.0f} s: is a worker running (cdrflow worker)? The command is on the account's "
                "log and takes effect when a worker folds it; running it again records nothing twice"
            )
        time.sleep(0.2)


# ---------------------------------------------------------------------------- transfers


@dataclass(frozen=True)
class TransferPlan:
    """What ``cdrflow number transfer`` is to do (issue 25): the account the number
    leaves, and which of the two commands the logs hold already (a run cut short)."""

    old: str
    out_recorded: bool
    in_recorded: bool


def transfer_event_id(account_id: str, number: str, at: datetime) -> str:
    """The id of the NumberTransferred event the fold gives on ``account_id``'s log."""
    return f"{account_id}/NumberTransferred/{number}/{at.isoformat()}"


def transfer_plan(db: Client, catalog: Tariffs, number: str, to: str, at: datetime) -> TransferPlan:
    """Check a transfer against the catalogue and what ClickHouse holds, before anything
    is written; the folds check again (docs/rules.md "Number transfer")."""
    chain = catalog.owners().get(number)
    holder = catalog.account_of_number().get(number)
    if chain is not None:
        holder = [owner for since, owner in chain if since is None or since <= at][-1]
    if holder is None:
        raise LedgerRefused(f"number {number} belongs to no account")
    if all(a.id != to for a in catalog.accounts):
        raise LedgerRefused(f"unknown account {to!r}")
    if holder == to:
        raise LedgerRefused(f"number {number} is account {to}'s already at {at.isoformat()}")
    recorded = {r[0] for r in db.execute(
        "SELECT event_id FROM billing_events FINAL WHERE kind = 'NumberTransferred' AND event_id IN %(ids)s",
        {"ids": (transfer_event_id(holder, number, at), transfer_event_id(to, number, at))},
    )}
    out_recorded = transfer_event_id(holder, number, at) in recorded
    target = require_account(db, catalog, to)
    if target["state"] in ("frozen", "closed"):
        raise LedgerRefused(f"account {to} is {target['state']}: it cannot take a number")
    if not out_recorded:
        old = require_account(db, catalog, holder)
        if old["balance"] < 0:
            raise LedgerRefused(
                f"account {holder} owes {format_money(-old['balance'])} (balance {format_money(old['balance'])}): "
                f"every fee must be paid before number {number} can be transferred"
            )
        if old["state"] in ("suspended", "frozen", "closed"):
            raise LedgerRefused(f"account {holder} is {old['state']}: its number cannot be transferred")
        latest = db.execute(
            "SELECT max(charge_time) FROM rated_calls FINAL WHERE account_id = %(a)s AND called = %(n)s",
            {"a": holder, "n": number},
        )
        billed = latest[0][0].replace(tzinfo=timezone.utc) if latest and latest[0][0] else None
        if billed is not None and billed.year > 1970 and billed >= at:
            raise LedgerRefused(
                f"a call of {number} charged at {billed.isoformat()} is billed to account {holder} already: the "
                f"transfer cannot take effect before it (--at {at.isoformat()})"
            )
    return TransferPlan(holder, out_recorded, transfer_event_id(to, number, at) in recorded)


def refusal_of(db: Client, settings: Settings, item: Published, event_id: str, *, timeout_s: float = WAIT_S) -> str | None:
    """Once the worker folded a command: None when it recorded the event ``event_id``
    (now or before), else why it refused the command (its ``ledger_refused`` rejection)."""
    source = f"{topic_name(CDR_RAW, settings.topic_prefix)}[{item.partition}]@{item.offset}"
    deadline = time.monotonic() + timeout_s
    while True:
        if db.execute("SELECT count() FROM billing_events FINAL WHERE event_id = %(e)s", {"e": event_id})[0][0]:
            return None
        refused = db.execute(
            "SELECT detail FROM rejected_cdrs FINAL WHERE reason = 'ledger_refused' AND source = %(s)s", {"s": source}
        )
        if refused:
            return str(refused[0][0])
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker folded {item.command.command_id} of {item.command.account_id} but "
                               f"neither its event nor a refusal landed within {timeout_s:.0f} s")
        time.sleep(0.2)


# ---------------------------------------------------------------------------- checks


def require_account(db: Client, catalog: Tariffs, account_id: str) -> dict[str, Any]:
    """The account's balance row; refuses an unknown account."""
    row = account_row(db, account_id)
    if row is None and all(a.id != account_id for a in catalog.accounts):
        raise LedgerRefused(f"unknown account {account_id!r}")
    if row is None:
        raise LedgerRefused(f"account {account_id!r} has not been folded by a worker yet: start `cdrflow worker`")
    return row


def month_has_ended(month: str, catalog: Tariffs, at: datetime) -> None:
    """Refuse to close a month that has not ended in every plan's timezone by ``at``."""
    zones = {plan.zone for plan in catalog.plans.values()} or set()
    for zone in zones:
        if month_bounds(month, zone)[1] > at:
            raise LedgerRefused(f"month {month} has not ended yet (it ends {month_bounds(month, zone)[1].isoformat()})")


def catalog(settings: Settings) -> Tariffs:
    return read_catalog(settings, topic_prefix=settings.topic_prefix)


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)
