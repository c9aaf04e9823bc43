"""Alert notifiers: every alert is POSTed to ``CDRFLOW_ALERT_WEBHOOK`` when it is set, and
logged one by one (WARNING) when it is not (then the log is where alerts go). With a
webhook, each batch of alerts is one INFO line (how many, how long) and each alert a
DEBUG line: a busy platform raises ~100 alerts a second, and a log line each cost the
worker's event loop more than a POST.

Kafka delivers at least once, so a receiver may get an alert twice (a replay after a
crash). Each POST carries an ``Idempotency-Key`` header derived from the alert's identity
(account, kind, cdr_id: at most one alert of a kind per call, spec 5), the same on every
delivery, so the receiver can drop repeats, and ``Authorization: Bearer`` when
``CDRFLOW_ALERT_WEBHOOK_TOKEN`` is set.

Retries are bounded (docs/streaming.md, "Sinks and notifiers"): a POST that times out
(``CDRFLOW_ALERT_WEBHOOK_TIMEOUT_S``), cannot connect or is answered 408/425/429/5xx is
tried again with growing waits, ``CDRFLOW_ALERT_WEBHOOK_TRIES`` times in all; then the
alert is **given up**: logged with the reason, and it stays in ClickHouse's ``alerts``
table, where every alert lands whatever the webhook does. A receiver that made an alert
give up is taken as down for :data:`DOWN_FOR_S`: alerts meanwhile are given up at once
(one INFO line each, one WARNING line a batch), then the next alert is tried once, and a
success brings the webhook back. So a hung receiver costs the notifier at most one
alert's tries a minute, never the alerts behind it. Any other 4xx means the receiver
refuses this alert: logged, not retried. The URL is logged without its password or
query (``Settings.redacted_webhook``); the token never.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

import aiohttp
import polars as pl

from schemas.money import format_money
from streams.settings import redact_url

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger(__name__)

#: uuid5 namespace of alert ids (a fixed, random uuid: ids stay the same across releases).
ALERT_NAMESPACE: Final[uuid.UUID] = uuid.UUID("6f0c1a52-9d1e-4d3e-8f8a-2f4c1b7d9e10")
_RETRY_STATUSES = frozenset({408, 425, 429})
#: How long a webhook that made an alert give up is left alone (its alerts are given up at once).
DOWN_FOR_S: Final[float] = 60.0
#: What :meth:`Notifier.post` made of an alert.
Outcome = Literal["posted", "refused", "given up"]

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
    token
        Sent as ``Authorization: Bearer <token>``.
    shown_as
        The URL as logs show it (default: ``webhook`` without password and query values).
    tries
        POSTs of one alert before it is given up.
    first_delay_s, max_delay_s
        The wait before the second try, and the longest wait between tries.
    timeout_s
        Longest wait for one POST's answer, connection included.
    down_for_s
        How long a webhook that made an alert give up is left alone.
    sleep
        ``asyncio.sleep``; tests pass a fast one.
    """

    def __init__(
        self,
        webhook: str | None,
        *,
        token: str | None = None,
        shown_as: str | None = None,
        tries: int = 4,
        first_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        timeout_s: float = 10.0,
        down_for_s: float = DOWN_FOR_S,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ):
        self.webhook = webhook
        self.shown_as = shown_as or (redact_url(webhook) if webhook else None)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.tries = tries
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.down_for_s = down_for_s
        self.sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.refused = 0
        self.given_up = 0
        #: monotonic time until which the webhook is taken as down, and why
        self._down_until = 0.0
        self._down_reason = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Notifier:
        token = settings.alert_webhook_token
        return cls(
            settings.alert_webhook,
            token=token.get_secret_value() if token is not None else None,
            shown_as=settings.redacted_webhook(),
            tries=settings.alert_webhook_tries,
            timeout_s=settings.alert_webhook_timeout_s,
        )

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
        skipped: list[str] = []

        async def post_in_order(payloads: list[dict[str, Any]]) -> None:
            async with gate:
                for payload in payloads:
                    if await self.post(payload) == "given up" and self._is_down():
                        skipped.append(payload["id"])

        delivered, refused, given_up = self.delivered, self.refused, self.given_up
        await asyncio.gather(*(post_in_order(payloads) for payloads in by_account.values()))
        if self.given_up > given_up:
            log.warning(
                "alerts: %d not posted to %s (%s); they are in ClickHouse's alerts table: %s%s",
                self.given_up - given_up, self.shown_as, self._down_reason, ", ".join(skipped[:10]),
                f" and {len(skipped) - 10} more" if len(skipped) > 10 else "",
            )
        log.info(
            "alerts: %d posted to the webhook, %d refused by it, %d given up (%d accounts) in %.2f s",
            self.delivered - delivered, self.refused - refused, self.given_up - given_up, len(by_account),
            time.monotonic() - started,
        )

    def _is_down(self) -> bool:
        return time.monotonic() < self._down_until

    async def post(self, payload: dict[str, Any]) -> Outcome:
        """POST one alert until the receiver takes it (2xx) or refuses it (4xx), or its
        tries are spent (given up); while the webhook is down, give it up at once."""
        assert self.webhook is not None
        if self._is_down():
            self.given_up += 1
            log.info("alert %s (account %s, %s, call %s) not posted: the webhook %s is down (%s)",
                     payload["id"], payload["account_id"], payload["kind"], payload["cdr_id"], self.shown_as,
                     self._down_reason)
            return "given up"
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        # Just back from a pause: one try, so a receiver still hung costs one timeout.
        tries = 1 if self._down_until else self.tries
        delay = self.first_delay_s
        for attempt in range(1, tries + 1):
            try:
                async with self._session.post(
                    self.webhook, json=payload, headers={"Idempotency-Key": payload["id"], **self._headers}
                ) as response:
                    status = response.status
                    if status < 300:
                        self.delivered += 1
                        self._down_until, self._down_reason = 0.0, ""
                        return "posted"
                    if 400 <= status < 500 and status not in _RETRY_STATUSES:
                        self.refused += 1
                        log.error(
                            "the alert webhook %s refused alert %s with HTTP %d: not retried (%s)",
                            self.shown_as, payload["id"], status, (await response.text())[:200],
                        )
                        return "refused"
                    reason = f"HTTP {status}"
            except asyncio.TimeoutError:
                reason = f"no answer within {self.timeout.total:g} s"
            except (aiohttp.ClientError, OSError) as error:
                reason = f"{type(error).__name__}: {error}"
            except ValueError as error:  # the request cannot be made (the URL): no try can mend it
                self.refused += 1
                log.error("alert %s cannot be posted to %s: %s", payload["id"], self.shown_as, error)
                return "refused"
            if attempt == tries:
                break
            wait = random.uniform(delay / 2, delay)
            log.warning("alert webhook %s: %s for alert %s; try %d of %d in %.1f s",
                        self.shown_as, reason, payload["id"], attempt + 1, tries, wait)
            await self.sleep(wait)
            delay = min(delay * 2, self.max_delay_s)
        self.given_up += 1
        self._down_until = time.monotonic() + self.down_for_s
        self._down_reason = f"{reason}, {tries} tr{'y' if tries == 1 else 'ies'}"
        log.warning(
            "alert %s (account %s, %s, call %s) given up after %d tr%s of %s: %s; it stays in ClickHouse's alerts "
            "table. Alerts of the next %.0f s are not posted", payload["id"], payload["account_id"], payload["kind"],
            payload["cdr_id"], tries, "y" if tries == 1 else "ies", self.shown_as, reason, self.down_for_s,
        )
        return "given up"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
