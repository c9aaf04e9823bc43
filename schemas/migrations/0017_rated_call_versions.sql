-- Issue 15 (corrections): the history of corrected calls. rated_calls keeps the current
-- version of a call (FINAL); once merged, earlier versions are gone from it. This table
-- keeps every version of every call a correction touched: the version first billed
-- (version 0, or the version the correction replaced) and each corrected one, so a
-- dispute can see what was billed and what was corrected, and finance can report as
-- billed or as corrected (docs/finance.md).
--
-- Fed by a materialized view of the rows of rated_calls that carry a correction_id (a
-- correction's rows; ordinary inserts carry none, so the view writes nothing for them).
-- Keyed by (account_id, cdr_id, version): a replayed insert collapses, every version stays.
-- Partitioned like rated_calls (the UTC month of charge_time), so retention drops both
-- together.

CREATE TABLE IF NOT EXISTS rated_call_versions (
    cdr_id String,
    account_id String,
    status String,
    class String,
    offpeak UInt8,
    billable_s Int64,
    allowance_s Int64,
    charged_s Int64,
    base Int64,
    discount Int64,
    minimum_uplift Int64,
    cap_waived Int64,
    amount Int64,
    balance Int64,
    line Int64,
    called String,
    charge_time DateTime('UTC'),
    charge_us UInt32,
    local_day Date,
    plan_id String,
    plan_version String,
    rate_segment String,
    tier_first Int32,
    tier_last Int32,
    daily_cap Nullable(Int64),
    offpeak_percent Int64,
    source String,
    ingest_id String,
    topic String,
    `partition` Int32,
    `offset` Int64,
    version UInt64,
    disposition String,
    caller String,
    caller_area String,
    billsec Int64,
    local_hour Int8,
    -- version 0: the correction that first replaced it; else the correction that made it
    correction_id String
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(charge_time)
ORDER BY (account_id, cdr_id, version);

CREATE MATERIALIZED VIEW IF NOT EXISTS rated_call_versions_mv TO rated_call_versions AS
SELECT
    cdr_id, account_id, status, class, offpeak, billable_s, allowance_s, charged_s, base, discount,
    minimum_uplift, cap_waived, amount, balance, line, called, charge_time, charge_us, local_day,
    plan_id, plan_version, rate_segment, tier_first, tier_last, daily_cap, offpeak_percent, source,
    ingest_id, topic, `partition`, `offset`, version, disposition, caller, caller_area, billsec,
    local_hour, correction_id
FROM rated_calls
WHERE correction_id != '';
