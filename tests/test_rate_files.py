"""The output frames of the offline path print exactly as polars prints their values."""

from __future__ import annotations

from datetime import date

import polars as pl

from schemas.output_files import alerts_csv_frame


def test_days_print_as_the_csv_writer_prints_dates() -> None:
    days = [date(2026, 3, 1), None, date(2026, 3, 31), date(1, 1, 1), date(9999, 12, 31), date(2026, 3, 1)]
    alerts = pl.DataFrame(
        {
            "account_id": ["A1"] * len(days),
            "kind": ["low_balance"] * len(days),
            "cdr_id": [f"C{n}" for n in range(len(days))],
            "balance": [-1500] * len(days),
            "line": list(range(2, 2 + len(days))),
            "local_day": days,
        }
    )
    written = alerts_csv_frame(alerts).write_csv()
    assert alerts_csv_frame(alerts).schema["local_day"] == pl.String
    assert written == alerts.with_columns(balance=pl.lit("-0.1500")).write_csv()
    assert "2026-03-01" in written and "9999-12-31" in written
