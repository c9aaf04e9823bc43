-- Issue 21 (item 11): output messages ClickHouse refused. The sink inserts a message's rows;
-- a message whose rows ClickHouse (or the sink's own checks) refuses for what they hold
-- (a type, a value out of range) is not retried forever, which would hold back every row
-- after it: it lands here, whole, with why, and `cdrflow status` shows it. While
-- ClickHouse cannot be reached, or a table is missing, the sink waits and tries again as
-- before (nothing is refused for that).
--   kind     the output topic's kind: rated, rejected, alerts, ledger, balances
--   topic, partition, offset   the message on Kafka (the rows are still there)
--   reason   what was refused, in words
--   rows     rows the message held
--   message  the message's value (JSON), as it was
-- Keyed by the message's position: a replayed message collapses.
CREATE TABLE IF NOT EXISTS dead_letters (
    kind String,
    topic String,
    `partition` Int32,
    `offset` Int64,
    reason String,
    rows UInt32,
    message String,
    landed_time DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree
ORDER BY (topic, `partition`, `offset`, kind);
