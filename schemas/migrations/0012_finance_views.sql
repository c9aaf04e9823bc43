-- Issue 6: finance's day-ordered projections of rated_calls, kept by materialized views.
--
-- A materialized view sees every block inserted into rated_calls, replays included
-- (0001's note). So no view here sums anything: each writes one row per call into a
-- ReplacingMergeTree whose sorting key ends with the call's identity (account_id,
-- cdr_id), with the call's `version`. A replayed call collapses with its copy, a rerated
-- one (higher version) replaces it, exactly as in rated_calls; exact figures read the
-- targets with FINAL (docs/finance.md). What the views buy is the order: rated_calls is
-- sorted by account (statements), these by local day first, so a report over a date
-- range reads only that range, and only the few columns it needs.
--
-- They are partitioned by local day: `cdrflow retention` merges each past day into one
-- part (OPTIMIZE ... FINAL), which holds no copies, and reports read such a day without
-- FINAL (streams/reports.py, grouped_by_day_range); only the days still receiving calls
-- (today, late arrivals) are read with FINAL, which on 18.16 is single-threaded.
--
-- The key starts with local_day, the call's day in its plan's timezone, fixed by its
-- charge time: a rerating does not move it (unless the account moved to a plan in
-- another timezone, docs/finance.md "Limits").

-- Every call (rated and unbilled): revenue by day / segment / class / plan / account,
-- usage by day / hour / duration / origin.
CREATE TABLE IF NOT EXISTS calls_by_day (
    local_day Date,
    account_id String,
    cdr_id String,
    plan_id String,
    -- the 400 number's segment: its first 4 digits (spec 1)
    segment String,
    called String,
    class String,
    status String,
    disposition String,
    local_hour Int8,
    caller_area String,
    billsec Int64,
    billable_s Int64,
    amount Int64,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY local_day
ORDER BY (local_day, account_id, cdr_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS calls_by_day_mv TO calls_by_day AS
SELECT
    local_day, account_id, cdr_id, plan_id, substring(called, 1, 4) AS segment, called,
    class, status, disposition, local_hour, caller_area, billsec, billable_s, amount, version
FROM rated_calls;

-- Missed calls (not answered: NO ANSWER, BUSY, FAILED, CONGESTION), for staffing the
-- enterprise's call centre: by 400 number and local hour.
CREATE TABLE IF NOT EXISTS missed_calls (
    local_day Date,
    account_id String,
    cdr_id String,
    called String,
    local_hour Int8,
    disposition String,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY local_day
ORDER BY (local_day, account_id, cdr_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS missed_calls_mv TO missed_calls AS
SELECT local_day, account_id, cdr_id, called, local_hour, disposition, version
FROM rated_calls
WHERE disposition NOT IN ('ANSWERED', '');

-- Calls that landed before the views existed. A call inserted between the views' creation
-- and these statements is copied twice: the copies collapse.
INSERT INTO calls_by_day
SELECT
    local_day, account_id, cdr_id, plan_id, substring(called, 1, 4) AS segment, called,
    class, status, disposition, local_hour, caller_area, billsec, billable_s, amount, version
FROM rated_calls;

INSERT INTO missed_calls
SELECT local_day, account_id, cdr_id, called, local_hour, disposition, version
FROM rated_calls
WHERE disposition NOT IN ('ANSWERED', '');
