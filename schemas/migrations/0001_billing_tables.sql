-- The three tables the rating path lands in (issue 4: the ClickHouse sink and export).
--
-- ClickHouse is a projection of the Kafka log, and Kafka delivers at least once: the
-- same row may be inserted twice (a replay, a retried insert). Every table is a
-- ReplacingMergeTree whose sorting key is the identity of a fact, so copies collapse;
-- read with FINAL (or argMax) where exactness matters, as finance does. No materialized
-- view may be fed from these tables: a view sees every inserted block, replays included
-- (docs/infra.md), and would count a replayed row twice.
--
-- Portable to ClickHouse 18.16 and current versions: no LowCardinality, DateTime64, Map,
-- TTL. Money is Int64 units of 0.0001 CNY (spec/rating.md 1). Text codes (status, class,
-- reason, kind) are String: Enum8 is not on clickhouse-driver's numpy insert path. A fact
-- that does not apply is '' or 0 where that value cannot occur otherwise (Nullable costs
-- at every insert and query), and Nullable only where it can (daily_cap).
--
-- Where a row came from: `source` is the ingested file's name, `ingest_id` the ingest
-- run that sent it, `line` its line in that file (the header is line 1); `topic`,
-- `partition`, `offset` its position in Kafka where known (else '', -1, -1).
-- `partition` and `offset` are keywords: quote them with backticks in queries.

-- One row per call that was not rejected (status rated or unbilled): every column of
-- rating.RatingResult.rated. A CDR id is unique per account (a repeat is rejected as
-- duplicate, spec 4.3), so (account_id, cdr_id) names the call; a rerating inserts the
-- call again with a higher `version` and replaces it. Partitioned by the month of
-- charge_time, which a rerating cannot move, so a call's copies share a partition.
CREATE TABLE IF NOT EXISTS rated_calls (
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
    -- the instant charged (UTC) in whole seconds, and its microseconds
    charge_time DateTime('UTC'),
    charge_us UInt32,
    local_day Date,
    plan_id String,
    -- '' for an unbilled call
    plan_version String,
    rate_segment String,
    -- the first and last tier charged (from 1); 0 when no second was charged (an
    -- unbilled call, or all from the allowance)
    tier_first Int32,
    tier_last Int32,
    -- null: no daily cap applies (a cap of 0 is a cap)
    daily_cap Nullable(Int64),
    offpeak_percent Int64,
    source String DEFAULT '',
    ingest_id String DEFAULT '',
    topic String DEFAULT '',
    `partition` Int32 DEFAULT -1,
    `offset` Int64 DEFAULT -1,
    -- deterministic: the same call rated from the same inputs gets the same id
    event_id String DEFAULT concat(account_id, '/', cdr_id),
    -- the highest version of a call wins (a rerating); copies of one version are equal
    version UInt64 DEFAULT 0
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(charge_time)
ORDER BY (account_id, cdr_id);

-- One row per rejected line, with its reason (spec 4). Keyed by where the line was read:
-- a replayed rejection collapses, while the same file ingested again (--force, a new
-- ingest_id) adds new rows. A rejection that comes from no file (a message on the CDR
-- topic that is not a CDR chunk) is named by its Kafka position in `source`.
CREATE TABLE IF NOT EXISTS rejected_cdrs (
    line Int64,
    cdr_id String,
    reason String,
    detail String,
    -- '' when no account is known (unknown number) or the line is malformed
    account_id String,
    source String DEFAULT '',
    ingest_id String DEFAULT '',
    topic String DEFAULT '',
    `partition` Int32 DEFAULT -1,
    `offset` Int64 DEFAULT -1
) ENGINE = ReplacingMergeTree()
ORDER BY (ingest_id, source, line);

-- Low-balance, daily-cap and arrears alerts (spec 5): at most one of each kind per call.
-- A rerating that changes an alert's balance inserts it with a higher `version`.
CREATE TABLE IF NOT EXISTS alerts (
    account_id String,
    kind String,
    cdr_id String,
    balance Int64,
    line Int64,
    local_day Date,
    source String DEFAULT '',
    ingest_id String DEFAULT '',
    topic String DEFAULT '',
    `partition` Int32 DEFAULT -1,
    `offset` Int64 DEFAULT -1,
    version UInt64 DEFAULT 0
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(local_day)
ORDER BY (account_id, kind, cdr_id);
