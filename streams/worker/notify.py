"""Alert notifiers: every alert is POSTed to ``CDRFLOW_ALERT_WEBHOOK`` when it is set, and
logged one by one (WARNING) when it is not (then the log is where alerts go). With a
webhook, each batch of alerts is one INFO line (how many, how long) and each alert a
DEBUG line: a busy platform raises ~100 alerts a second, and a log line each cost the
worker's event loop more than a POST.

Kafka delivers at least once, so a receiver may get an alert twice (a replay after a
crash). Each POST carries an ``Idempotency-Key`` header derived from the alert's identity
(account, kind, cdr_id: at most one alert of a kind per call, spec 5), the same on every
delivery, so the receiver can drop repeats. A POST is retried with growing waits while the
receiver cannot be reached or answers 408/429/5xx: nothing is dropped because the
receiver was down. Any other 4xx means the receiver refuses this alert: it is logged and
not retried (retrying would stall every later alert behind it).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp
import polars as pl

from schemas.money import format_money

log = logging.getLogger(__name__)

#: uuid5 namespace of alert ids (a fixed, random uuid: ids stay the same across releases).
ALERT_NAMESPACE: Final[uuid.UUID] = uuid.UUID("6f0c1a52-9d1e-4d3e-8f8a-2f4c1b7d9e10")
_RETRY_STATUSES = frozenset({408, 425, 429})
#: POSTs in flight at once (alerts of one account go one after another, in log order).
#: Under 5: a receiver built on Python's socketserver listens with a backlog of 5, and
#: connections past it wait for a SYN retry (~1 s); measured against such a receiver in
#: another process, 300 alerts of 50 accounts took 0.32 s one at a time, 0.21 s with 2 or
#: 4 in flight, 1.08 s with 8.
CONCURRENCY: Final[int] = 4


def alert_id(account_id: str, kind: str, cdr_id: str) -> str:
    """The deterministic id of an alert: its ``Idempotency-Key``.

    Examples
    --------
    >>> alert_id("A001", "low_balance", "H00042") == alert_id("A001", "low_balance", "H00042")
    True
    >>> alert_id("A001", "low_balance", "H00042") != alert_id("A001", "arrears", "H00042")
    True
    """
    return str(uuid.uuid5(ALERT_NAMESPACE, "\x1f".join((account_id, kind, cdr_id))))


def alert_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of one alert (a row of ``RatingResult.alerts``).

    Examples
    --------
    >>> from datetime import date
    >>> alert_payload({"account_id": "A001", "kind": "low_balance", "cdr_id": "H1",
    ...                "balance": 123400, "line": 7, "local_day": date(2026, 3, 2)})["balance"]
    '12.3400'
    """
    day = row.get("local_day")
    return {
        "id": alert_id(row["account_id"], row["kind"], row["cdr_id"]),
        "account_id": row["account_id"],
        "kind": row["kind"],
        "cdr_id": row["cdr_id"],
        "balance": format_money(row["balance"]),
        "balance_units": row["balance"],
        "local_day": day.isoformat() if day is not None else None,
        "source": row.get("source") or "",
        "line": row.get("line"),
    }


class Notifier:
    """Logs alerts and, with a webhook, POSTs them (see the module docstring).

    Parameters
    ----------
    webhook
        The URL to POST to, or None to only log.
    first_delay_s, max_delay_s
        The wait before the second try, and the longest wait between tries.
    sleep
        ``asyncio.sleep``; tests pass a fast one.
    """

    def __init__(
        self,
        webhook: str | None,
        *,
        first_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        timeout_s: float = 10.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ):
        self.webhook = webhook
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.refused = 0

    async def notify(self, alerts: pl.DataFrame) -> None:
        """POST every alert of the frame (per account in order) when a webhook is set; log
        each one (WARNING) when none is, or at DEBUG with a line for the batch."""
        started = time.monotonic()
        each = log.debug if self.webhook is not None else log.warning
        by_account: dict[str, list[dict[str, Any]]] = {}
        for row in alerts.iter_rows(named=True):
            if row.get("cancelled"):
                # A correction took it back (docs/rules.md "Corrections"): nothing to tell.
                log.info("alert %s of account %s, call %s, cancelled by a correction",
                         row["kind"], row["account_id"], row["cdr_id"])
                continue
            payload = alert_payload(row)
            each(
                "alert %s: account %s, call %s, balance %s (%s)",
                payload["kind"], payload["account_id"], payload["cdr_id"], payload["balance"], payload["id"],
            )
            by_account.setdefault(payload["account_id"], []).append(payload)
        if self.webhook is None or not by_account:
            return
        gate = asyncio.Semaphore(CONCURRENCY)

        async def post_in_order(payloads: list[dict[str, Any]]) -> None:
            async with gate:
                for payload in payloads:
                    await self.post(payload)

        delivered, refused = self.delivered, self.refused
        await asyncio.gather(*(post_in_order(payloads) for payloads in by_account.values()))
        log.info(
            "alerts: %d posted to the webhook, %d refused by it (%d accounts) in %.2f s",
            self.delivered - delivered, self.refused - refused, len(by_account), time.monotonic() - started,
        )

    async def post(self, payload: dict[str, Any]) -> bool:
        """POST one alert until the receiver takes it (2xx) or refuses it (4xx); True if taken."""
        assert self.webhook is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        delay = self.first_delay_s
        tries = 0
        while True:
            tries += 1
            try:
                async with self._session.post(
                    self.webhook, json=payload, headers={"Idempotency-Key": payload["id"]}
                ) as response:
                    status = response.status
                    if status < 300:
                        self.delivered += 1
                        return True
                    if 400 <= status < 500 and status not in _RETRY_STATUSES:
                        self.refused += 1
                        log.error(
                            "the alert webhook refused alert %s with HTTP %d: not retried (%s)",
                            payload["id"], status, (await response.text())[:200],
                        )
                        return False
                    reason = f"HTTP {status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
                reason = repr(error)
            wait = random.uniform(delay / 2, delay)
            log.warning("alert webhook: %s for alert %s; try %d in %.1f s", reason, payload["id"], tries + 1, wait)
            await self.sleep(wait)
            delay = min(delay * 2, self.max_delay_s)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
