"""The vectorised engine rates every random log exactly as the plain reference does.

The engine is imported inside the tests so that collection works while it is being
written; the reference (tests/reference.py) is the plain reading of spec/rating.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from schemas.columns import CDR_HEADER
from tests.reference import rate_reference_csv
from tests.strategies import Scenario, scenarios

RATED_KEYS = ("line", "cdr_id", "account_id", "status", "class", "offpeak", "billable_s",
              "allowance_s", "charged_s", "base", "discount", "minimum_uplift", "cap_waived",
              "amount", "balance", "credit_used", "credit")
ALERT_KEYS = ("line", "account_id", "kind", "cdr_id", "balance")

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example],
)


# --- focused examples --------------------------------------------------------------------

def _call(cdr_id: str, called: str, answered_at: str, billsec: int,
          caller_area: str = "010", answer_area: str = "010") -> str:
    """An ANSWERED CDR line: rung 5 s before ``answered_at``, hung up ``billsec`` after it."""
    answer = datetime.fromisoformat(answered_at.replace("Z", "+00:00"))
    offset = answered_at[19:]

    def iso(instant: datetime) -> str:
        return instant.strftime("%Y-%m-%dT%H:%M:%S") + offset

    return ",".join([cdr_id, "sw1", "13800138000", called, "01088886666", caller_area,
                     answer_area, iso(answer - timedelta(seconds=5)), answered_at,
                     iso(answer + timedelta(seconds=billsec)), str(billsec), "ANSWERED"])


def _scenario(plans: list[dict], accounts: list[dict], lines: list[str], **more: object) -> Scenario:
    return Scenario(plan_dicts=plans, account_dicts=accounts,
                    csv_text="\r\n".join([CDR_HEADER, *lines]) + "\r\n", **more)  # type: ignore[arg-type]


def _plan(plan_id: str, versions: list[dict], timezone: str = "Asia/Shanghai") -> dict:
    return {"id": plan_id, "timezone": timezone, "versions": versions}


def _tiers(*per_minute: tuple[int, str] | str) -> list[dict]:
    return [{"up_to_minutes": step[0], "per_minute": step[1]} if isinstance(step, tuple)
            else {"per_minute": step} for step in per_minute]


VERSIONS_SWITCH_MID_MONTH = _scenario(
    [
        _plan("switch", [
            {"effective_from": "2026-01-01T00:00:00+08:00", "included_minutes": 2,
             "per_call_minimum": "0.10", "daily_cap": "5.00",
             "rates": [{"segment": "*", "class": "local", "tiers": _tiers((3, "0.15"), "0.10")}]},
            {"effective_from": "2026-02-15T12:00:00+08:00", "included_minutes": 10,
             "daily_cap": "0.40", "increment": {"first": 6, "next": 6},
             "rates": [{"segment": "*", "class": "local", "tiers": _tiers("0.20")},
                       {"segment": "4008", "class": "local", "tiers": _tiers("0.30")}]},
        ]),
        # first version takes effect mid-month: it is also that month's version
        _plan("late", [{"effective_from": "2026-02-10T00:00:00+08:00", "included_minutes": 3,
                        "rates": [{"segment": "*", "class": "local", "tiers": _tiers("0.12")}]}]),
    ],
    [
        {"id": "A001", "plan": "switch", "numbers": ["4008012345", "4001234567"],
         "opening_balance": "3.00", "low_balance_threshold": "2.00"},
        {"id": "A002", "plan": "late", "numbers": ["4006001234"], "opening_balance": "1.00"},
    ],
    [
        _call("S1", "4008012345", "2026-02-14T10:00:00+08:00", 150),
        _call("S2", "4001234567", "2026-02-15T11:59:59+08:00", 61),
        _call("S3", "4008012345", "2026-02-15T12:00:00+08:00", 61),
        _call("S4", "4001234567", "2026-02-15T13:00:00+08:00", 100),
        _call("S5", "4008012345", "2026-02-16T10:00:00+08:00", 50),
        _call("S6", "4008012345", "2026-02-16T10:05:00+08:00", 50),
        _call("S7", "4008012345", "2026-02-28T16:00:00Z", 700),
        _call("S8", "4006001234", "2026-02-09T23:59:59+08:00", 30),
        _call("S9", "4006001234", "2026-02-12T10:00:00+08:00", 200),
    ],
)

INCREMENTS_30_6 = _scenario(
    [_plan("eco", [{"effective_from": "2026-01-01T00:00:00+08:00", "per_call_minimum": "0.05",
                    "increment": {"first": 30, "next": 6},
                    "rates": [{"segment": "*", "class": "local", "tiers": _tiers("0.10")},
                              {"segment": "4008", "class": "long_distance",
                               "tiers": _tiers((1, "0.21"), "0.19")}]}])],
    [{"id": "A001", "plan": "eco", "numbers": ["4008012345"], "opening_balance": "2.00"}],
    [
        _call("E1", "4008012345", "2026-02-02T10:00:00+08:00", 1),
        _call("E2", "4008012345", "2026-02-02T10:10:00+08:00", 30),
        _call("E3", "4008012345", "2026-02-02T10:20:00+08:00", 31),
        _call("E4", "4008012345", "2026-02-02T10:30:00+08:00", 37, caller_area="021"),
        _call("E5", "4008012345", "2026-02-02T10:40:00+08:00", 95, caller_area="021"),
    ],
)

TIER_CROSSED_INSIDE_ONE_CALL = _scenario(
    [_plan("tiers", [{"effective_from": "2026-01-01T00:00:00+08:00",
                      "increment": {"first": 1, "next": 1},
                      "offpeak": {"discount_percent": 50, "windows": [["00:00", "06:00"]]},
                      "rates": [{"segment": "*", "class": "local",
                                 "tiers": _tiers((1, "0.15"), (3, "0.13"), "0.1133")},
                                {"segment": "400", "class": "long_distance",
                                 "tiers": _tiers((1, "0.0030"), "0.0001")}]}])],
    [{"id": "A001", "plan": "tiers", "numbers": ["4008012345", "4008123456"],
      "opening_balance": "1.00"}],
    [
        _call("T1", "4008012345", "2026-02-02T10:00:00+08:00", 50),
        _call("T2", "4008123456", "2026-02-02T10:10:00+08:00", 200),
        _call("T3", "4008012345", "2026-02-02T10:20:00+08:00", 7),
        # 1 s at 0.0030/min: raw 30, base rounds half up to 1, 50 % off rounds half up
        _call("T4", "4008012345", "2026-02-02T03:00:00+08:00", 1, caller_area="021"),
        _call("T5", "4008012345", "2026-02-02T03:10:00+08:00", 70, caller_area="021"),
    ],
)

CAP_BINDS = _scenario(
    [_plan("capped", [{"effective_from": "2026-01-01T00:00:00+08:00", "daily_cap": "1.00",
                       "per_call_minimum": "0.30",
                       "rates": [{"segment": "*", "class": "local", "tiers": _tiers("0.20")}]}])],
    [
        {"id": "A001", "plan": "capped", "numbers": ["4008012345"], "opening_balance": "1.20",
         "low_balance_threshold": "1.00", "daily_cap": "0.50"},
        {"id": "A002", "plan": "capped", "numbers": ["4008123456"], "opening_balance": "1.50",
         "low_balance_threshold": "1.00"},
        {"id": "A003", "plan": "capped", "numbers": ["4001234567"], "opening_balance": "0.00",
         "daily_cap": "0.00"},
    ],
    [
        _call("K1", "4008012345", "2026-02-02T10:00:00+08:00", 180),
        _call("K2", "4008012345", "2026-02-02T11:00:00+08:00", 10),
        _call("K3", "4008012345", "2026-02-03T10:00:00+08:00", 125),
        _call("K4", "4008123456", "2026-02-02T10:00:00+08:00", 180),
        _call("K5", "4008123456", "2026-02-02T10:30:00+08:00", 180),
        _call("K6", "4008123456", "2026-02-02T10:40:00+08:00", 180),
        _call("K7", "4008123456", "2026-02-02T16:00:00Z", 180),
        _call("K8", "4001234567", "2026-02-02T10:00:00+08:00", 60),
        _call("K9", "4001234567", "2026-02-02T10:10:00+08:00", 60),
    ],
)

NON_SHANGHAI_TIMEZONES = _scenario(
    [
        _plan("ny", [{"effective_from": "2026-01-01T00:00:00-05:00", "included_minutes": 1,
                      "offpeak": {"discount_percent": 25, "weekends": True,
                                  "windows": [["01:30", "03:00"]], "holidays": ["2026-03-02"]},
                      "rates": [{"segment": "*", "class": "local", "tiers": _tiers("0.15")}]},
                     {"effective_from": "2026-03-01T00:00:00-05:00", "included_minutes": 2,
                      "daily_cap": "0.20",
                      "rates": [{"segment": "*", "class": "local", "tiers": _tiers("0.25")}]}],
              timezone="America/New_York"),
        _plan("adl", [{"effective_from": "2026-02-01T00:00:00+10:30", "included_minutes": 1,
                       "daily_cap": "0.30",
                       "rates": [{"segment": "*", "class": "local", "tiers": _tiers("0.40")}]}],
              timezone="Australia/Adelaide"),
    ],
    [
        {"id": "A001", "plan": "ny", "numbers": ["4008012345"], "opening_balance": "2.00"},
        {"id": "A002", "plan": "adl", "numbers": ["4008123456"], "opening_balance": "2.00"},
    ],
    [
        _call("N1", "4008012345", "2026-03-01T04:59:59Z", 120),   # Feb 28 local (Saturday)
        _call("N2", "4008012345", "2026-03-01T05:00:00Z", 120),   # Mar 1 local: new month
        _call("N3", "4008012345", "2026-03-02T04:59:00Z", 240),   # Sunday local
        _call("N4", "4008012345", "2026-03-02T05:00:00Z", 60),    # Monday, a holiday
        _call("N5", "4008012345", "2026-03-08T07:00:00Z", 60),    # 03:00 EDT after DST
        _call("N6", "4008012345", "2026-03-08T06:59:59Z", 60),    # 01:59:59 EST
        _call("N7", "4008123456", "2026-01-31T13:29:59Z", 90),    # before the plan (local Feb 1)
        _call("N8", "4008123456", "2026-01-31T13:30:00Z", 90),    # Feb 1 00:00 ACDT
        _call("N9", "4008123456", "2026-02-01T13:29:59Z", 90),    # still Feb 1 local
    ],
)

WINDOW_WRAPS_MIDNIGHT = _scenario(
    [
        _plan("night", [{"effective_from": "2026-01-01T00:00:00+08:00",
                         "offpeak": {"discount_percent": 30, "windows": [["22:00", "08:00"]]},
                         "rates": [{"segment": "*", "class": "local", "tiers": _tiers("0.17")}]}]),
        _plan("allday", [{"effective_from": "2026-01-01T00:00:00+05:30",
                          "offpeak": {"discount_percent": 33, "windows": [["13:30", "13:30"]]},
                          "rates": [{"segment": "*", "class": "local", "tiers": _tiers("0.17")}]}],
              timezone="Asia/Kolkata"),
    ],
    [
        {"id": "A001", "plan": "night", "numbers": ["4008012345"], "opening_balance": "5.00"},
        {"id": "A002", "plan": "allday", "numbers": ["4008123456"], "opening_balance": "5.00"},
    ],
    [
        _call("W1", "4008012345", "2026-02-03T21:59:59+08:00", 60),
        _call("W2", "4008012345", "2026-02-03T22:00:00+08:00", 60),
        _call("W3", "4008012345", "2026-02-03T15:59:59Z", 60),
        _call("W4", "4008012345", "2026-02-03T16:00:00Z", 60),
        _call("W5", "4008012345", "2026-02-04T07:59:59+08:00", 60),
        _call("W6", "4008012345", "2026-02-04T08:00:00+0800", 60),
        _call("W7", "4008123456", "2026-02-04T08:00:00Z", 60),
        _call("W8", "4008123456", "2026-02-04T13:30:00+05:30", 60),
    ],
)


PACKAGE_CREDIT_ENDS = _scenario(
    [
        # issue 23: credit drawn before the balance, ended at the first call at or after
        # the end of the term (refunded here), a "*" rate beside a local one, its allowance
        _plan("pkg", [{"effective_from": "2026-01-01T00:00:00+08:00", "included_minutes": 1,
                       "package": {"price": "1.00", "credit": "1.20", "term_months": 1, "unused": "refund"},
                       "rates": [{"segment": "*", "class": "*", "tiers": _tiers("0.30")},
                                 {"segment": "*", "class": "local", "tiers": _tiers("0.10")}]}]),
        _plan("flat", [{"effective_from": "2026-01-01T00:00:00+08:00",
                        "package": {"price": "0.50", "term_months": 1},
                        "rates": [{"segment": "*", "class": "*", "tiers": _tiers("0.20")}]}]),
    ],
    [
        {"id": "A001", "plan": "pkg", "numbers": ["4008012345"], "opening_balance": "1.50",
         "low_balance_threshold": "1.00", "opened_at": "2026-02-10T09:00:00+08:00"},
        {"id": "A002", "plan": "flat", "numbers": ["4008123456"], "opening_balance": "0.50",
         "low_balance_threshold": "0.30", "opened_at": "2026-02-01T00:00:00+08:00"},
    ],
    [
        _call("P1", "4008012345", "2026-02-11T10:00:00+08:00", 120, caller_area="+44"),  # 1 min free, 0.30
        _call("P2", "4008012345", "2026-02-12T10:00:00+08:00", 300),  # local 0.50: credit 0.40
        _call("Q1", "4008123456", "2026-02-02T10:00:00+08:00", 180, caller_area="021"),  # 0.60: credit 0.50, balance 0.10
        _call("P3", "4008012345", "2026-03-10T09:00:00+08:00", 60, caller_area="021"),  # ends: +0.40; March's free minute
        _call("P4", "4008012345", "2026-03-01T10:00:00+08:00", 60),  # before the end, after it in the log
        _call("Q2", "4008123456", "2026-03-01T00:00:00+08:00", 60),  # ends with nothing left
    ],
)


TRANSFER_AND_BURST = _scenario(
    [
        _plan("flat", [{"effective_from": "2026-01-01T00:00:00+08:00",
                        "rates": [{"segment": "*", "class": "*", "tiers": _tiers("0.10")}]}]),
    ],
    [
        {"id": "A001", "plan": "flat", "numbers": ["4008012345"], "opening_balance": "10.00"},
        {"id": "A002", "plan": "flat", "numbers": ["4008123456", "4001234567"], "opening_balance": "10.00"},
    ],
    [
        # issue 25: 4001234567 moved from A001 to A002 at March 1 (local): by charge time
        _call("T1", "4001234567", "2026-02-28T23:59:59+08:00", 60),   # A001's
        _call("T2", "4001234567", "2026-03-01T00:00:00+08:00", 60),   # A002's
        _call("T3", "4001234567", "2026-02-27T10:00:00+08:00", 60),   # late, still A001's
        # three international calls within an hour between 00:00 and 06:00: one alert
        _call("B1", "4008012345", "2026-03-02T01:00:00+08:00", 60, caller_area="+44"),
        _call("B2", "4008012345", "2026-03-02T01:20:00+08:00", 60, caller_area="+44"),
        _call("B3", "4008012345", "2026-03-02T01:40:00+08:00", 60, caller_area="0044"),
        _call("B4", "4008012345", "2026-03-02T01:50:00+08:00", 60, caller_area="+1"),   # same burst
        _call("B5", "4008012345", "2026-03-02T03:40:00+08:00", 60, caller_area="+1"),   # not one: re-armed
        _call("B6", "4008012345", "2026-03-02T10:00:00+08:00", 60, caller_area="+1"),   # daytime: not counted
        _call("B7", "4008012345", "2026-03-02T03:50:00+08:00", 60, caller_area="+1"),
        _call("B8", "4008012345", "2026-03-02T04:00:00+08:00", 60, caller_area="+1"),   # a new burst
    ],
    rules={"unusual_calls": {"count": 3, "window_minutes": 60, "classes": ["international"],
                             "hours": ["00:00", "06:00"]}},
    transfers=({"number": "4001234567", "from": "A001", "to": "A002", "at": "2026-03-01T00:00:00+08:00"},),
)


def test_transfer_and_burst_example() -> None:
    # The worked example itself, against the expectations in its comments.
    (result,) = _engine_results(TRANSFER_AND_BURST)
    owners = dict(result.rated.select("cdr_id", "account_id").rows())
    assert [owners[c] for c in ("T1", "T2", "T3")] == ["A001", "A002", "A001"]
    assert result.alerts.filter(pl.col("kind") == "unusual_calls").get_column("cdr_id").to_list() == ["B3", "B8"]


# --- running both sides ------------------------------------------------------------------

def _engine_results(scenario: Scenario, cuts: list[int] | None = None) -> list:
    """The engine over the whole log, or over its pieces split at ``cuts``, state chained."""
    from rating import Catalog, RatingState, rate
    from schemas.cdr_csv import parse_csv

    batch = parse_csv(scenario.csv_bytes)
    catalog = Catalog.from_tariffs(scenario.tariffs, horizon_months=scenario.horizon_months)
    state = RatingState.empty()
    bounds = [0, *(min(cut, batch.height) for cut in cuts or []), batch.height]
    results = []
    for start, stop in zip(bounds, bounds[1:]):
        result = rate(batch[start:stop], state, catalog)
        state = result.state
        results.append(result)
    return results


@PROPERTY_SETTINGS
@given(scenario=scenarios())
@example(scenario=VERSIONS_SWITCH_MID_MONTH)
@example(scenario=INCREMENTS_30_6)
@example(scenario=TIER_CROSSED_INSIDE_ONE_CALL)
@example(scenario=CAP_BINDS)
@example(scenario=NON_SHANGHAI_TIMEZONES)
@example(scenario=WINDOW_WRAPS_MIDNIGHT)
@example(scenario=PACKAGE_CREDIT_ENDS)
@example(scenario=TRANSFER_AND_BURST)
def test_engine_equals_reference_on_random_logs(scenario: Scenario) -> None:
    want_rated, want_rejected, want_alerts = rate_reference_csv(
        scenario.tariffs, scenario.csv_bytes, scenario.horizon_months
    )
    (result,) = _engine_results(scenario)

    got_rated = result.rated.select(RATED_KEYS).rows()
    got_rejected = set(result.rejected.select("line", "reason").rows())
    got_alerts = result.alerts.select(ALERT_KEYS).rows()

    assert got_rated == [tuple(row[k] for k in RATED_KEYS) for row in want_rated]
    assert got_rejected == {(row["line"], row["reason"]) for row in want_rejected}
    assert got_alerts == [tuple(row[k] for k in ALERT_KEYS) for row in want_alerts]


@PROPERTY_SETTINGS
@given(scenario=scenarios(), data=st.data())
def test_splitting_the_log_into_batches_changes_nothing(scenario: Scenario, data: st.DataObject) -> None:
    # docs/architecture.md: rating is rate(batch, state) -> (events, state); a stream cuts the log anywhere.
    rows = scenario.csv_bytes.rstrip(b"\n").count(b"\n")
    cuts = sorted(data.draw(st.sets(st.integers(0, rows), max_size=4), label="cuts"))
    (whole,) = _engine_results(scenario)
    pieces = _engine_results(scenario, cuts)

    for output in ("rated", "rejected", "alerts"):
        assert_frame_equal(pl.concat([getattr(p, output) for p in pieces]), getattr(whole, output))
