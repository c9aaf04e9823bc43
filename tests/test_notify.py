"""Alert notifiers (streams.worker.notify): stable idempotency keys, retries, refusals."""

from __future__ import annotations

import asyncio
import re
from datetime import date

import polars as pl
import pytest
from aiohttp import web

from streams.worker.notify import Notifier, alert_id

ALERTS = pl.DataFrame(
    {
        "account_id": ["A001", "A001", "A002"],
        "kind": ["daily_cap_reached", "low_balance", "arrears"],
        "cdr_id": ["H1", "H1", "H9"],
        "balance": [123400, 123400, -500],
        "line": [2, 2, 9],
        "local_day": [date(2026, 3, 2)] * 3,
    }
)


async def _site(handle, **runner_options) -> tuple[web.AppRunner, str]:  # type: ignore[no-untyped-def]
    """A local webhook at ``/alerts`` served by ``handle``: its runner and URL."""
    app = web.Application()
    app.router.add_post("/alerts", handle)
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/alerts"


async def _serve(answers: list[int]) -> tuple[web.AppRunner, str, list[tuple[str, dict]]]:
    """A webhook answering the given statuses in turn (then 200), recording each POST."""
    received: list[tuple[str, dict]] = []
    pending = list(answers)

    async def handle(request: web.Request) -> web.Response:
        received.append((request.headers["Idempotency-Key"], await request.json()))
        return web.Response(status=pending.pop(0) if pending else 200)

    runner, url = await _site(handle)
    return runner, url, received


def _notify(answers: list[int], alerts: pl.DataFrame = ALERTS) -> tuple[list[tuple[str, dict]], Notifier]:
    async def run() -> tuple[list[tuple[str, dict]], Notifier]:
        runner, url, received = await _serve(answers)
        notifier = Notifier(url, first_delay_s=0.01, max_delay_s=0.02)
        try:
            await notifier.notify(alerts)
        finally:
            await notifier.close()
            await runner.cleanup()
        return received, notifier

    return asyncio.run(run())


def test_each_alert_is_posted_once_with_its_idempotency_key_in_log_order() -> None:
    received, notifier = _notify([])
    assert [key for key, _ in received if _["account_id"] == "A001"] == [
        alert_id("A001", "daily_cap_reached", "H1"),
        alert_id("A001", "low_balance", "H1"),
    ]
    assert {key for key, _ in received} == {alert_id(*row) for row in ALERTS.select("account_id", "kind", "cdr_id").rows()}
    assert all(body["id"] == key for key, body in received)
    assert notifier.delivered == 3


def test_a_receiver_that_fails_is_tried_again_with_the_same_key() -> None:
    received, notifier = _notify([503, 500, 429])
    keys = [key for key, _ in received]
    assert len(keys) == 6 and set(keys) == {alert_id(*r) for r in ALERTS.select("account_id", "kind", "cdr_id").rows()}
    assert notifier.delivered == 3


def test_a_refused_alert_is_not_retried() -> None:
    received, notifier = _notify([400, 400, 400])
    assert len(received) == 3 and notifier.refused == 3 and notifier.delivered == 0


def test_alert_ids_are_stable_and_distinct() -> None:
    assert alert_id("A1", "arrears", "c") == alert_id("A1", "arrears", "c")
    assert len({alert_id("A1", k, "c") for k in ("arrears", "low_balance", "daily_cap_reached")}) == 3


def test_an_alert_a_correction_cancelled_is_not_posted() -> None:
    received, notifier = _notify([], ALERTS.with_columns(cancelled=pl.Series([0, 1, 0], dtype=pl.UInt8)))
    assert sorted(body["kind"] for _, body in received) == ["arrears", "daily_cap_reached"]
    assert notifier.delivered == 2


def test_without_a_webhook_each_alert_is_logged_and_with_one_each_batch(caplog) -> None:  # type: ignore[no-untyped-def]
    import logging

    caplog.set_level(logging.INFO, logger="streams.worker.notify")
    asyncio.run(Notifier(None).notify(ALERTS))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all(w.startswith("alert ") for w in warnings)

    caplog.clear()
    _notify([400])
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    summaries = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(summaries) == 1
    assert re.fullmatch(
        r"alerts: 2 posted to the webhook, 1 refused by it, 0 given up \(2 accounts\) in \d+\.\d\d s", summaries[0]
    )


async def _hanging_webhook() -> tuple[web.AppRunner, str, list[str]]:
    """A webhook that takes every POST and never answers (a hung receiver)."""
    arrived: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        arrived.append(request.headers["Idempotency-Key"])
        await asyncio.sleep(3600)
        return web.Response(status=200)

    runner, url = await _site(handle, shutdown_timeout=0.1)
    return runner, f"{url}?token=tok-s3cret", arrived


def test_a_hung_webhook_gives_each_alert_up_after_its_tries_and_then_pauses(caplog) -> None:  # type: ignore[no-untyped-def]
    import logging

    caplog.set_level(logging.INFO, logger="streams.worker.notify")

    async def run() -> tuple[list[str], Notifier]:
        runner, url, arrived = await _hanging_webhook()
        notifier = Notifier(url, tries=3, timeout_s=0.2, first_delay_s=0.01, max_delay_s=0.02)
        try:
            await notifier.notify(ALERTS)
        finally:
            await notifier.close()
            await runner.cleanup()
        return arrived, notifier

    arrived, notifier = asyncio.run(run())
    # The first alert to fail is tried 3 times; then the webhook counts as down and every
    # other alert is given up at once (at most the ones already in flight were tried too).
    assert notifier.given_up == 3 and notifier.delivered == 0
    assert 3 <= len(arrived) <= 3 * 2
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "given up after 3 tries" in logged and "no answer within 0 s" not in logged
    assert "it stays in ClickHouse's alerts table" in logged
    assert "tok-s3cret" not in logged and "token=***" in logged


def test_after_the_pause_one_try_and_a_success_brings_the_webhook_back() -> None:
    async def run() -> tuple[list[tuple[str, dict]], Notifier]:
        runner, url, received = await _serve([503, 503, 503])
        notifier = Notifier(url, tries=2, first_delay_s=0.01, max_delay_s=0.02, down_for_s=0.3)
        try:
            first = ALERTS.head(1)
            await notifier.notify(first)  # 503, 503: given up, the webhook is down
            await notifier.notify(ALERTS.slice(1, 1))  # down: given up without a POST
            await asyncio.sleep(0.35)
            await notifier.notify(ALERTS.slice(1, 1))  # one try (503): given up, down again
            await asyncio.sleep(0.35)
            await notifier.notify(ALERTS.slice(2, 1))  # one try: 200, back up
            await notifier.notify(ALERTS.slice(1, 1))  # up: posted
        finally:
            await notifier.close()
            await runner.cleanup()
        return received, notifier

    received, notifier = asyncio.run(run())
    assert len(received) == 2 + 0 + 1 + 1 + 1
    assert (notifier.given_up, notifier.delivered) == (3, 2)


def test_the_token_goes_in_the_authorization_header() -> None:
    seen: list[str | None] = []

    async def run() -> None:
        async def handle(request: web.Request) -> web.Response:
            seen.append(request.headers.get("Authorization"))
            return web.Response(status=204)

        runner, url = await _site(handle)
        notifier = Notifier(url, token="bearer-s3cret")
        try:
            await notifier.notify(ALERTS.head(1))
        finally:
            await notifier.close()
            await runner.cleanup()

    asyncio.run(run())
    assert seen == ["Bearer bearer-s3cret"]


def test_the_notifier_takes_its_limits_and_token_from_the_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from streams.settings import Settings

    token = tmp_path / "token"
    token.write_text("file-token-123\n")
    settings = Settings(
        alert_webhook="https://hooks.example.com/a?key=k-123456",
        alert_webhook_token_file=token,
        alert_webhook_tries=2,
        alert_webhook_timeout_s=3,
    )
    notifier = Notifier.from_settings(settings)
    assert (notifier.tries, notifier.timeout.total) == (2, 3)
    assert notifier._headers == {"Authorization": "Bearer file-token-123"}
    assert notifier.shown_as == "https://hooks.example.com/a?key=***"
    with pytest.raises(ValueError, match="choose one"):  # two Authorizations for one request
        Settings(alert_webhook="https://ops:pw12345@hooks.example.com/a", alert_webhook_token="t-123456")
