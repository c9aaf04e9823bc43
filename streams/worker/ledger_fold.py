"""The ledger commands inside a batch: books, balances and the events they give.

Pure (no Kafka, no Faust): the batch (streams.worker.batch) hands each round of ledger
commands to :class:`LedgerFold`, which folds them with rating.ledger in log order."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Final

import numpy as np
import polars as pl

from rating import Catalog, RatingState, invoicing
from rating.corrected_state import corrected_state
from rating.fields import with_typed_fields
from rating.ledger import (
    Book,
    FORWARDS_KEPT,
    Credit,
    Terms,
    after_calls,
    apply_command,
    credit_event_id,
    spend_limit,
    tracks_numbers,
)
from rating.state import CREDITS_SCHEMA
from schemas.ledger import LedgerCommand, LedgerEvent
from schemas.messages import cdr_chunk_value, frame_from_value
from streams.clickhouse.tables import ALERTS, RATED, Table
from streams.worker.messages import _KEY_INDEX, OutputMessage, SourceMessage, _garbage_row, encode

log = logging.getLogger(__name__)


_ROUND = "_round"


_EVENT_SCHEMA = {
    "event_id": pl.String,
    "account_id": pl.String,
    "kind": pl.String,
    "effective_time": pl.Datetime("us", "UTC"),
    "local_day": pl.Date,
    "month": pl.String,
    "amount": pl.Int64,
    "opening_balance": pl.Int64,
    "balance": pl.Int64,
    "plan_id": pl.String,
    "reference": pl.String,
    "detail": pl.String,
    "topic": pl.String,
    "partition": pl.Int32,
    "offset": pl.Int64,
    _KEY_INDEX: pl.Int32,
    "credit_change": pl.Int64,
    "credit": pl.Int64,
    "document": pl.String,
    "transferred_to": pl.String,
}


class LedgerFold:
    """The ledger side of a batch: books, balances, and the events they give."""

    def __init__(self, catalog: Catalog, topic: str, keys: list[bytes], ledgers: Mapping[str, Any]) -> None:
        self.catalog = catalog
        self.topic = topic
        self.keys = keys
        self.books: dict[str, Book] = {a: Book.from_json(ledger) for a, ledger in ledgers.items()}
        self.events: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.statuses: list[OutputMessage] = []
        self.refusals: list[dict[str, Any]] = []
        #: rated rows of corrections (new versions, and the versions they replace)
        self.corrected_rows: list[pl.DataFrame] = []
        self._corrected_alerts: list[pl.DataFrame] = []
        #: unusual_spend alerts raised by calls (issue 25), with the calls' origin columns
        self._call_alerts: list[pl.DataFrame] = []
        #: calls of numbers this log gave away, for the logs of the accounts that hold them
        self.forwards: list[OutputMessage] = []
        #: (account, month key) of month records a correction changed
        self.corrected_months: list[tuple[str, int]] = []
        self.latest: dict[str, Any] = {}
        self._accounts = {
            row["account_id"]: row for row in catalog.accounts.select(
                "account_id", "plan_id", "opening_balance", "low_balance_threshold", "package_price",
                "opening_credit", "opening_credit_expires", "opening_credit_refund",
            ).iter_rows(named=True)
        }
        self._plans = {plan.id: plan for plan in catalog.plans}
        #: balances and package credits the commands left, applied to the state at the next flush
        self._pending: dict[str, tuple[int, Credit | None]] = {}
        self._known: tuple[pl.DataFrame, dict[str, int]] | None = None
        self._known_credits: tuple[pl.DataFrame, dict[str, Credit]] | None = None

    # --------------------------------------------------------------- calls
    def split_inactive(self, lines: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Lines this account's log holds but does not bill (ledger.md 5, issue 25), in
        this order: a call of a number the account had given away at the call's charge
        time goes to the log of the account that held it then (:attr:`forwards`); a call
        of a released number that starts at or after its release is ``unknown_number``;
        a call of a kept, frozen or closed account is ``account_inactive``. The rest is
        given back to rate."""
        periods = {a: b.inactive_periods() for a, b in self.books.items()}
        # Every line of an account with a lifecycle period or a release to come; only the
        # lines of its given-away or released numbers otherwise (a busy account that gave
        # one number away pays nothing for the others).
        whole = {a for a, b in self.books.items() if periods[a] or (b.arrears or {}).get("release_at")}
        pairs = {f"{a}\x00{n}" for a, b in self.books.items() for n in (*b.away, *b.released)}
        if not whole and not pairs:
            return lines, lines.clear()
        books = {a: b for a, b in self.books.items() if a in whole or b.away or b.released}
        accounts = pl.Series([self.keys[i].decode("utf-8", "replace") for i in range(len(self.keys))])
        owner = accounts.gather(lines.get_column(_KEY_INDEX))
        candidates = owner.is_in(list(whole))
        if pairs:
            keyed = (owner + "\x00" + lines.get_column("called").fill_null("")).is_in(list(pairs))
            candidates = candidates | keyed
        candidates = candidates.to_numpy()
        if not candidates.any():
            return lines, lines.clear()
        typed = with_typed_fields(lines.filter(pl.Series(candidates)).select(
            "start_time", "answer_time", "end_time", "billsec", "called"
        ))
        where = np.flatnonzero(candidates)
        reasons: list[str | None] = [None] * lines.height
        details: list[str | None] = [None] * lines.height
        forward_to: list[str | None] = [None] * lines.height
        rows = zip(where, typed.get_column("start").to_list(), typed.get_column("answer").to_list(),
                   typed.get_column("called").to_list(), strict=True)
        for row, start, answer, called in rows:
            if start is None:
                continue  # a malformed time: the engine rejects it for that
            account = owner[int(row)]
            book = books[account]
            charged = answer or start
            holder = book.away_at(called, charged) if called else None
            if holder is not None:
                forward_to[row] = holder
                continue
            release = book.release_of(called) if called else None
            if release is not None and start >= release:
                reasons[row] = "unknown_number"
                details[row] = f"called number {called} was released by account {account} at {release.isoformat()}"
                continue
            for since, until in periods[account]:
                if since <= start and (until is None or start < until):
                    reasons[row] = "account_inactive"
                    details[row] = f"account {account} is kept, frozen or closed at the call's start"
                    break
        forwarded = pl.Series([to is not None for to in forward_to])
        if forwarded.any():
            self._forward(lines.with_columns(pl.Series("_to", forward_to, dtype=pl.String)).filter(forwarded), owner.filter(forwarded))
        reason = pl.Series("reason", reasons, dtype=pl.String)
        hit = reason.is_not_null()
        if not hit.any():
            return lines.filter(~forwarded), lines.clear()
        refused = lines.with_columns(reason, pl.Series("detail", details, dtype=pl.String)).filter(hit)
        inactive = refused.select(
            "line", "cdr_id", "reason", "detail",
            # a released number is no account's (as the feeds reject it)
            pl.when(pl.col("reason") == "unknown_number").then(None).otherwise(owner.filter(hit)).alias("account_id"),
            *[c for c in ("source", "ingest_id", "topic", "partition", "offset", _KEY_INDEX) if c in lines.columns],
        )
        return lines.filter(~hit & ~forwarded), inactive

    def _forward(self, lines: pl.DataFrame, owner: pl.Series) -> None:
        """Calls of a number this log had given away then (a transfer, issue 25) go to the
        log of the account that held it: one chunk per message they came in and account,
        named ``<account>@<partition>:<offset>`` so that the taker skips a second copy."""
        lines = lines.with_columns(owner.alias("_from"))
        for (to, from_, partition, offset), part in lines.partition_by(
            "_to", "_from", "partition", "offset", maintain_order=True, as_dict=True
        ).items():
            value = cdr_chunk_value(part.get_column("source")[0] or "", part, part.get_column("ingest_id")[0] or "")
            value["forwarded"] = f"{from_}@{partition}:{offset}"
            log.info("forwarding %d line(s) of %s to account %s (a transferred number)", part.height, from_, to)
            self.forwards.append(
                OutputMessage("forward", to.encode(), encode(value), from_.encode(), None, (from_.encode(),))
            )

    def after_calls(self, result: Any) -> RatingState:
        """Month usage (minimum spend) and suspensions (arrears) from a round of calls."""
        state = result.state
        rated = result.rated
        if rated.height and self.books:
            # Rated calls only: an unbilled call's money is 0 (the usage is the same).
            usage = (
                rated.filter(pl.col("account_id").is_in(list(self.books)) & (pl.col("status") == "rated"))
                .group_by("account_id", pl.col("local_day").dt.strftime("%Y-%m").alias("month"), "class")
                .agg(pl.col("amount").sum(), pl.col("credit_used").sum(), pl.len(), pl.col("billable_s").sum())
                .with_columns(pl.format("{}|calls|{}", "month", "class").alias("class"))
            )
            for account, month, key, amount, credit_used, calls, seconds in usage.iter_rows():
                book = self.books[account]
                # issue 24: the calls wait for their invoice (what the balance paid; the
                # package credit was invoiced with the package)
                invoicing.record_calls(book.billing, month, "", amount - credit_used, calls, seconds, credit_used, key)
                if month in book.closed_months or not book.remembers(month):
                    continue  # closed: later calls do not re-open its minimum spend (docs/rules.md)
                book.usage[month] = book.usage.get(month, 0) + amount
            self._number_usage(rated)
            self._unusual_spend(rated)
        if rated.height:
            latest = rated.group_by("account_id").agg(pl.col("charge_time").max())
            for account, at in latest.iter_rows():
                self._touch(account, at)
        if result.expiries is not None and result.expiries.height:
            self._expiries(result.expiries)
        arrears = result.alerts.filter(pl.col("kind") == "arrears")
        if arrears.height and self.books:
            times = arrears.join(rated.select("account_id", "cdr_id", "charge_time"), on=["account_id", "cdr_id"])
            for account, rows in times.group_by("account_id", maintain_order=True):
                account_id = account[0]
                book = self.books.get(account_id)
                terms = self._terms(account_id, None)
                if book is None or book.opened_at is None or terms is None:
                    continue
                pairs = list(zip(rows.get_column("cdr_id").to_list(), rows.get_column("charge_time").to_list()))
                balance = self._balance(state, account_id)
                book, balance, applied = after_calls(book, balance, terms, pairs, self._credit(state, account_id))
                self.books[account_id] = book
                index = int(rows.get_column(_KEY_INDEX)[0]) if _KEY_INDEX in rows.columns else self._index(account_id)
                position = (
                    (int(rows.get_column("partition")[-1]), int(rows.get_column("offset")[-1]))
                    if "offset" in rows.columns else (-1, -1)
                )
                self._record(applied, index, position, terms)
        return state

    def _unusual_spend(self, rated: pl.DataFrame) -> None:
        """The month's charges the calls add (issue 25), and the ``unusual_spend`` alert at
        the first call of a month that takes them above its limit (rating.ledger.spend_limit)."""
        percent = self.catalog.rules.unusual_spend_percent
        charged = rated.filter(
            pl.col("account_id").is_in(list(self.books)) & (pl.col("amount") > 0)
        ).with_columns(month=pl.col("local_day").dt.strftime("%Y-%m"))
        if charged.height == 0:
            return
        limits = []
        for account, month, amount in (
            charged.group_by("account_id", "month", maintain_order=True).agg(pl.col("amount").sum()).iter_rows()
        ):
            book = self.books[account]
            if month in book.closed_months or not book.remembers(month):
                continue  # a closed month's charges are as its close left them
            before = book.spend.get(month, 0)
            limit = spend_limit(book, month, percent)
            book.spend[month] = before + amount
            if limit is not None and before + amount > limit:
                limits.append((account, month, before, limit))
                book.unusual_months.append(month)
        if not limits:
            return
        judged = charged.join(
            pl.DataFrame(limits, schema={"account_id": pl.String, "month": pl.String, "before": pl.Int64,
                                         "limit": pl.Int64}, orient="row"),
            on=["account_id", "month"],
            maintain_order="left",
        ).with_columns(running=pl.col("before") + pl.col("amount").cum_sum().over("account_id", "month"))
        first = judged.filter(pl.col("running") > pl.col("limit")).group_by(
            "account_id", "month", maintain_order=True
        ).first()
        origin = [c for c in ("source", "ingest_id", "topic", "partition", "offset", _KEY_INDEX) if c in first.columns]
        self._call_alerts.append(
            first.select("account_id", pl.lit("unusual_spend").alias("kind"), "cdr_id", "balance", "line",
                         "local_day", *origin)
        )

    def _number_usage(self, rated: pl.DataFrame) -> None:
        """The month's usage per 400 number of accounts with floors per number (issue 23)."""
        tracked = [a for a, b in self.books.items() if b.plan_id in self._plans and tracks_numbers(self._plans[b.plan_id])]
        if not tracked:
            return
        usage = (
            rated.filter(pl.col("account_id").is_in(tracked))
            .group_by("account_id", pl.col("local_day").dt.strftime("%Y-%m").alias("month"), "called")
            .agg(pl.col("amount").sum())
        )
        for account, month, called, amount in usage.iter_rows():
            book = self.books[account]
            if month in book.closed_months or not book.remembers(month):
                continue
            numbers = book.number_usage.setdefault(month, {})
            numbers[called] = numbers.get(called, 0) + amount

    def _expiries(self, expiries: pl.DataFrame) -> None:
        """Package credit that ended at a call (rating.credit): a ``PackageCreditExpired``
        event each, at the credit's end, placed at the call's message."""
        for row in expiries.iter_rows(named=True):
            account = row["account_id"]
            terms = self._terms(account, None)
            book = self.books.get(account)
            if terms is None or book is None:
                continue
            ends = row["credit_expires"]
            left = int(row["credit_expired"])
            refund = bool(row["credit_refund"])
            book.event_count += 1
            event = LedgerEvent(
                event_id=credit_event_id(account, ends),
                account_id=account,
                kind="PackageCreditExpired",
                at=ends,
                amount=left if refund else 0,
                balance=int(row["balance"]),
                plan_id=book.plan_id or terms.plan.id,
                credit_change=-left,
                credit=0,
                reference=ends.astimezone(terms.plan.zone).isoformat(),
                detail=f"end of the package term, at call {row['cdr_id']}: credit {left} "
                + ("to the balance" if refund else "forfeited"),
            )
            index = int(row[_KEY_INDEX]) if _KEY_INDEX in row else self._index(account)
            position = (int(row["partition"]), int(row["offset"])) if "offset" in row else (-1, -1)
            invoicing.record_event(book.billing, event, terms.plan.zone, position[1])
            self._record(_Events([event]), index, position, terms)

    def took_forward(self, account: str, forward_id: str) -> None:
        """Remember a forwarded chunk this account's log took (issue 25): a copy is skipped."""
        book = self.books.get(account)
        if book is not None:
            book.forwards = [*book.forwards, forward_id][-FORWARDS_KEPT:]

    # --------------------------------------------------------------- commands
    def apply(self, state: RatingState, index: int, message: SourceMessage, command: LedgerCommand) -> RatingState:
        account = self.keys[index].decode("utf-8", "replace")
        terms = self._terms(account, command)
        if command.account_id != account or terms is None:
            why = (
                f"the command names account {command.account_id} but is keyed {account}"
                if command.account_id != account
                else f"plan {command.plan or '(none)'} of account {account} is not in the catalogue"
            )
            self._refuse(message, index, command, why)
            return state
        book = self.books.get(account, Book())
        balance = self._balance(state, account)
        correction = command.correction
        recorded = correction is not None and correction.part in book.corrections.get(correction.correction_id, [0, []])[1]
        book, balance, applied = apply_command(
            book, balance, command, terms, offset=message.offset, credit=self._credit(state, account)
        )
        if applied.refusal:
            self._refuse(message, index, command, applied.refusal)
            return state
        self.books[account] = book
        self._record(applied, index, (message.partition, message.offset), terms)
        self._touch(account, command.at)
        if correction is not None and not recorded:
            state = self._corrected(self.flush(state), account, index, message, correction)
        self._pending[account] = (balance, applied.credit)
        return state

    def skipped(self, state: RatingState, index: int, message: SourceMessage, command: LedgerCommand, rows: int) -> None:
        """The ``InputSkipped`` event of a message an operator skipped (``cdrflow blocked
        skip``): no money; ``reference`` names the message, ``detail`` says why and how many
        lines it held (kept as ``skipped`` rejections)."""
        account = self.keys[index].decode("utf-8", "replace")
        terms = self._terms(account, None)
        local = command.at.astimezone(terms.plan.zone if terms is not None else timezone.utc)
        position = f"{self.topic}[{message.partition}]@{message.offset}"
        credit = self._credit(state, account)
        self.events.append(
            {
                "event_id": f"{account}/InputSkipped/{position}",
                "account_id": account,
                "kind": "InputSkipped",
                "effective_time": command.at.astimezone(timezone.utc),
                "local_day": local.date(),
                "month": local.strftime("%Y-%m"),
                "amount": 0,
                "opening_balance": 0,
                "balance": self._balance(state, account),
                "plan_id": terms.plan.id if terms is not None else "",
                "reference": position,
                "detail": f"{rows} line(s) kept as rejections: {command.reason}"[:500],
                # no package credit moves (issue 23); the credit right after it, as every event
                "credit_change": 0,
                "credit": credit.amount if credit is not None else 0,
                "document": "",
                "topic": self.topic,
                "partition": message.partition,
                "offset": message.offset,
                _KEY_INDEX: index,
            }
        )
        self._touch(account, command.at)

    def _corrected(self, state: RatingState, account: str, index: int, message: SourceMessage, correction: Any) -> RatingState:
        """A correction part's rows, alerts and month records (docs/rules.md "Corrections")."""
        # Above every earlier version of these calls: the first rating's (0), or an
        # earlier correction's (its own offset + 1, lower than this one's).
        version = message.offset + 1
        tag = {"correction_id": correction.correction_id, _KEY_INDEX: index}
        rows = _rows(correction.rows, RATED).with_columns(
            version=pl.lit(version, dtype=pl.UInt64), **_literals(tag)
        )
        self.corrected_rows.append(rows)
        if correction.billed_rows:
            self.corrected_rows.append(_rows(correction.billed_rows, RATED).with_columns(**_literals(tag)))
        if correction.alerts:
            alerts = _rows(correction.alerts, ALERTS).with_columns(
                version=pl.lit(version, dtype=pl.UInt64), **_literals({_KEY_INDEX: index})
            )
            self._corrected_alerts.append(alerts)
        state, months = corrected_state(state, account, correction.calls, correction.days, self.catalog.horizon_months)
        self.corrected_months.extend((account, month) for month in months)
        return state

    # --------------------------------------------------------------- outputs
    def event_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.events, schema=_EVENT_SCHEMA)

    def alert_frames(self) -> list[pl.DataFrame]:
        frames = [*self._call_alerts, *self._corrected_alerts]
        if self.alerts:
            frames.insert(len(self._call_alerts), pl.DataFrame(self.alerts).with_columns(pl.col(_KEY_INDEX).cast(pl.Int32)))
        return frames

    def status_messages(self) -> list[OutputMessage]:
        return self.statuses

    def balance_row(
        self, account: str, index: int, offset: int, state: RatingState, book: Book | None
    ) -> dict[str, Any]:
        known = self._accounts.get(account)
        balance = self._balance(state, account)
        credit = self._credit(state, account)
        return {
            "account_id": account,
            "balance": balance,
            "credit": credit.amount if credit is not None else 0,
            "credit_expires": "" if credit is None else credit.expires.astimezone(
                self._plans[book.plan_id].zone if book is not None and book.plan_id in self._plans else timezone.utc
            ).isoformat(),
            "state": book.shown_state() if book is not None and book.lifecycle else "active",
            **_next_step(book, self._plans[book.plan_id].zone if book is not None and book.plan_id in self._plans
                         else timezone.utc),
            "plan_id": (book.plan_id if book is not None and book.plan_id else (known or {}).get("plan_id", "")),
            "updated_time": self.latest.get(account, datetime(1970, 1, 1, tzinfo=timezone.utc)),
            "version": offset,
            "events": book.event_count if book is not None else 0,
            _KEY_INDEX: index,
        }

    # --------------------------------------------------------------- helpers
    def _terms(self, account: str, command: LedgerCommand | None) -> Terms | None:
        known = self._accounts.get(account)
        book = self.books.get(account)
        plan_id = (book.plan_id if book and book.plan_id else "") or (known or {}).get("plan_id") or (
            command.plan if command is not None else ""
        )
        plan = self._plans.get(plan_id)
        if plan is None:
            return None
        threshold = known["low_balance_threshold"] if known else DEFAULT_LOW_BALANCE
        return Terms(account, plan, threshold, self.catalog.rules.unusual_spend_percent)

    def _balance(self, state: RatingState, account: str) -> int:
        if account in self._pending:
            return self._pending[account][0]
        if self._known is None or self._known[0] is not state.balances:
            self._known = (state.balances, dict(state.balances.iter_rows()))
        if account in self._known[1]:
            return int(self._known[1][account])
        known = self._accounts.get(account)
        return int(known["opening_balance"]) - int(known["package_price"]) if known else 0

    def _credit(self, state: RatingState, account: str) -> Credit | None:
        """The account's package credit (issue 23), as the engine would seed it."""
        if account in self._pending:
            return self._pending[account][1]
        if self._known_credits is None or self._known_credits[0] is not state.credits:
            self._known_credits = (
                state.credits,
                {a: Credit(c, e, r) for a, c, e, r in state.credits.iter_rows()},
            )
        if account in self._known_credits[1]:
            return self._known_credits[1][account]
        if self._known is None or self._known[0] is not state.balances:
            self._known = (state.balances, dict(state.balances.iter_rows()))
        known = self._accounts.get(account)
        if account in self._known[1] or known is None or known["opening_credit_expires"] is None:
            return None
        return Credit(int(known["opening_credit"]), known["opening_credit_expires"], bool(known["opening_credit_refund"]))

    def flush(self, state: RatingState) -> RatingState:
        """The state with the balances and credits the commands since the last flush left
        (one concat each)."""
        if not self._pending:
            return state
        accounts = list(self._pending)
        pending = pl.DataFrame(
            {"account_id": accounts, "balance": [balance for balance, _ in self._pending.values()]},
            schema=state.balances.schema,
        )
        credits = pl.DataFrame(
            [
                (account, credit.amount, credit.expires, credit.refund)
                for account, (_, credit) in self._pending.items()
                if credit is not None
            ],
            schema=CREDITS_SCHEMA,
            orient="row",
        )
        self._pending = {}
        balances = pl.concat([state.balances.join(pending, on="account_id", how="anti"), pending])
        kept = state.credits.filter(~pl.col("account_id").is_in(accounts))
        return dataclasses.replace(state, balances=balances, credits=pl.concat([kept, credits]))

    def _index(self, account: str) -> int:
        return self.keys.index(account.encode())

    def _touch(self, account: str, at: datetime) -> None:
        previous = self.latest.get(account)
        self.latest[account] = at if previous is None or at > previous else previous

    def _record(self, applied: Any, index: int, position: tuple[int, int], terms: Terms) -> None:
        zone = terms.plan.zone
        for event in applied.events:
            local = event.at.astimezone(zone)
            month = event.reference if event.kind in _MONTH_CLOSE else local.strftime("%Y-%m")
            self.events.append(
                {
                    **event.model_dump(exclude={"at"}),
                    "effective_time": event.at.astimezone(timezone.utc),
                    "local_day": local.date(),
                    "month": month,
                    "topic": self.topic,
                    "partition": position[0],
                    "offset": position[1],
                    _KEY_INDEX: index,
                }
            )
        for alert in applied.alerts:
            self.alerts.append({**alert, _KEY_INDEX: index})
        for number, status, event_id, at in applied.statuses:
            value = {"number": number, "status": status, "account_id": terms.account_id,
                     "event_id": event_id, "at": at.isoformat()}
            self.statuses.append(
                OutputMessage("status", number.encode(), encode(value), terms.account_id.encode())
            )

    def _refuse(self, message: SourceMessage, index: int, command: LedgerCommand, why: str) -> None:
        log.warning("ledger command %s of %s refused: %s", command.command_id, command.account_id, why)
        row = _garbage_row(message, self.topic, index, ValueError(why))
        row.update(
            cdr_id=command.command_id,
            reason="ledger_refused",
            detail=f"{command.kind} refused: {why}",
            account_id=command.account_id,
        )
        self.refusals.append(row)


def _next_step(book: Book | None, zone: Any) -> dict[str, str]:
    """The lifecycle's next deadline for ``account show`` (issue 25): what, and when in
    the plan's timezone."""
    step = None if book is None else book.next_step()
    if step is None:
        return {"next_step": "", "next_step_at": ""}
    return {"next_step": step[0], "next_step_at": step[1].astimezone(zone).isoformat()}


@dataclasses.dataclass
class _Events:
    """What ``_record`` takes: events alone (no alerts, no statuses)."""

    events: list[LedgerEvent]
    alerts: tuple[()] = ()
    statuses: tuple[()] = ()


#: An account the catalogue does not know yet (opened by command): tariffs.Account's default.
DEFAULT_LOW_BALANCE: Final[int] = 500_000


_MONTH_CLOSE: Final = frozenset({"RentCharged", "ServiceFeeCharged", "MinimumSpendTrueUp", "KeepNumberFeeCharged"})


def _rows(value: dict[str, Any], table: Table) -> pl.DataFrame:
    """The rows of a correction's frame value, typed as ``table`` stores them."""
    schema = {**table.schema, **table.optional}
    rows = value.get("rows", {})
    return frame_from_value(value, {name: schema[name] for name in rows if name in schema})


def _literals(values: Mapping[str, Any]) -> dict[str, pl.Expr]:
    return {
        name: pl.lit(value, dtype=pl.Int32 if name == _KEY_INDEX else None) for name, value in values.items()
    }
