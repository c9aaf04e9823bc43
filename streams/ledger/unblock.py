"""Blocked accounts: list them, try one again, or skip the message it is blocked at.

A worker blocks an account whose message it cannot apply (docs/streaming.md, "When
something fails"); its later messages wait in ``cdr.raw`` while every other account goes
on. ``cdrflow blocked retry`` and ``skip`` put an ``unblock`` command on the account's log
(``schemas.ledger``), so the worker holding the partition tries the account again at once
(streams.worker.runner.RatingWorker.try_again); with a skip, the message it is blocked at
is kept as ``skipped`` rejections and an ``InputSkipped`` event, and the rest of its log
is applied. Being on the log, the request is audited and a replay does the same
(docs/rules.md, "Blocked accounts").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

from schemas.ledger import LedgerCommand
from streams.ledger.commands import LedgerRefused, Published, publish
from streams.settings import Settings
from streams.stack.status import worker_state

#: How long `blocked retry|skip` waits for the worker's answer, and how often it looks.
WAIT_S: Final[float] = 120.0
POLL_S: Final[float] = 1.0


@dataclass(frozen=True)
class Outcome:
    """What became of a request: ``unblocked``, ``blocked`` again (``note``), or
    ``waiting`` (no worker answered within the wait: the request stays on the log)."""

    account: str
    published: Published
    state: str
    note: dict[str, Any] | None


def blocked_accounts(settings: Settings) -> dict[str, dict[str, Any]]:
    """Blocked accounts as the workers last published them (``worker.status``): account ->
    partition, offset (the first message not applied), error, at, worker."""
    found: dict[str, dict[str, Any]] = {}
    for partition, figures in worker_state(settings).items():
        for account, note in figures.get("blocked", {}).items():
            found[account] = {**note, "partition": partition, "worker": figures.get("worker", "")}
    return dict(sorted(found.items()))


def request(settings: Settings, account: str, *, skip_reason: str | None = None) -> tuple[Published, dict[str, Any]]:
    """Put an unblock command for ``account`` on its log (a skip of the message it is
    blocked at when ``skip_reason`` is given); return it and the note it answers.

    Raises :class:`LedgerRefused` (nothing written) when the account is not blocked or the
    reason is blank.
    """
    note = blocked_accounts(settings).get(account)
    if note is None:
        raise LedgerRefused(f"account {account!r} is not blocked (cdrflow blocked lists those that are)")
    if skip_reason is not None and not skip_reason.strip():
        raise LedgerRefused("--reason: say why the message is skipped (it is kept with the skipped lines)")
    command = LedgerCommand(
        kind="unblock",
        account_id=account,
        at=datetime.now(timezone.utc).replace(microsecond=0),
        skip_offset=int(note["offset"]) if skip_reason is not None else None,
        reason=(skip_reason or "").strip(),
    )
    (published,) = publish(settings, [command])
    return published, note


def wait_outcome(
    settings: Settings, published: Published, before: dict[str, Any], *, timeout_s: float = WAIT_S
) -> Outcome:
    """Wait until the worker tried the account again: free (``unblocked``), or blocked by a
    new note (``blocked``); ``waiting`` if no worker answered within ``timeout_s``."""
    account = published.command.account_id
    deadline = time.monotonic() + timeout_s
    while True:
        figures = worker_state(settings).get(int(before["partition"]), {})
        note = figures.get("blocked", {}).get(account)
        newer = _instant(figures.get("at")) >= published.command.at
        if note is None and newer:
            return Outcome(account, published, "unblocked", None)
        if note is not None and (note.get("at") != before.get("at") or int(note["offset"]) != int(before["offset"])):
            return Outcome(account, published, "blocked", {**note, "partition": int(before["partition"])})
        if time.monotonic() > deadline:
            return Outcome(account, published, "waiting", note)
        time.sleep(POLL_S)


def _instant(text: object) -> datetime:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
