-- Issue 21: the finance views of 0014 keep a call's unbilled leg and its billed leg apart
-- too (migration 0020): call_key hashes `record` after the cdr_id when it is not '' (so
-- every key made before is unchanged, and nothing needs to be copied again). The views
-- are re-created on the same tables; rows that land in rated_calls while this runs are
-- in rated_calls but not in the views (run it with the workers stopped, as `cdrflow up` does).
DROP TABLE IF EXISTS calls_by_day_mv;
DROP TABLE IF EXISTS missed_calls_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS calls_by_day_mv TO calls_by_day AS
SELECT
    local_day, account_id, cdr_id, plan_id, substring(called, 1, 4) AS segment, called,
    class, status, disposition, local_hour, caller_area, billsec, billable_s, amount, version,
    sipHash128(concat(toString(length(account_id)), ':', account_id, cdr_id,
                      if(record = '', '', concat('\x1f', record)))) AS call_key
FROM rated_calls;

CREATE MATERIALIZED VIEW IF NOT EXISTS missed_calls_mv TO missed_calls AS
SELECT
    local_day, account_id, cdr_id, called, local_hour, disposition, version,
    sipHash128(concat(toString(length(account_id)), ':', account_id, cdr_id,
                      if(record = '', '', concat('\x1f', record)))) AS call_key
FROM rated_calls
WHERE disposition NOT IN ('ANSWERED', '');
