-- Issue 6, retention: what `cdrflow retention` keeps of a monthly partition of rated_calls
-- before it drops it, so statements after it stay exact (the opening balance of a month
-- sums every call before it). One row per account, local month (plan timezone, as the
-- statement's months) and dropped partition (toYYYYMM(charge_time), UTC): a call of the
-- first hours of a local month can sit in the previous UTC month's partition.
-- Written from rated_calls FINAL; writing it again gives the same row, which collapses.
-- Should old calls be replayed into a dropped partition and dropped again, the row with
-- the most calls (the whole month) wins: ReplacingMergeTree(calls).
CREATE TABLE IF NOT EXISTS retained_call_totals (
    account_id String,
    month String,
    `partition` UInt32,
    calls UInt64,
    billable_s Int64,
    amount Int64,
    retained_time DateTime('UTC')
) ENGINE = ReplacingMergeTree(calls)
ORDER BY (account_id, month, `partition`);
