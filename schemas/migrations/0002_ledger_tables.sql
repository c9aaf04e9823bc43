-- The ledger's projections (issue 5; spec/ledger.md): every event of an account's log
-- that is not a rated call (those are in rated_calls), and the latest balance and
-- lifecycle state of each account. Both are written by the worker that folds the log, so
-- a replay inserts identical rows again: ReplacingMergeTree collapses them; read with
-- FINAL or argMax. `cdrflow rebuild` drops and refills them from the log.

-- One row per ledger event (ledger.md section 1). `amount` is the event's own money
-- (signed: + adds to the balance, - takes from it): for AccountOpened the opening fee
-- (-), with the balance the account was opened with in `opening_balance` (0 on every
-- other kind). So an account's balance is sum(amount + opening_balance) over its
-- billing_events minus sum(amount) over its rated_calls, to the unit.
-- `balance` is the balance right after the event, in log order.
CREATE TABLE IF NOT EXISTS billing_events (
    event_id String,
    account_id String,
    -- AccountOpened, NumberAssigned, TopUpReceived, RentCharged, ServiceFeeCharged,
    -- MinimumSpendTrueUp, KeepNumberFeeCharged, SlaCreditGranted, ServiceEnabled,
    -- ServiceDisabled, AccountSuspended, AccountReactivated, KeepNumberStarted,
    -- KeepNumberEnded, CancellationRequested, NumberFrozen, AccountClosed, RefundIssued
    kind String,
    -- the instant the event takes effect (UTC, whole seconds) and its microseconds
    effective_time DateTime('UTC'),
    effective_us UInt32,
    -- the local day and month (plan timezone) it belongs to; a month-close event belongs
    -- to the month it closes
    local_day Date,
    month String,
    amount Int64,
    opening_balance Int64 DEFAULT 0,
    balance Int64,
    plan_id String DEFAULT '',
    -- what the event is about: the payment reference, the number, the service, the closed
    -- month ('2026-03'), the SLA day; '' when nothing
    reference String DEFAULT '',
    -- human-readable explanation (grade and fee, pro-rating, shortfall, due date...)
    detail String DEFAULT '',
    topic String DEFAULT '',
    `partition` Int32 DEFAULT -1,
    `offset` Int64 DEFAULT -1,
    version UInt64 DEFAULT 0
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(local_day)
ORDER BY (account_id, event_id);

-- The latest balance and state of each account: one row per account per log message
-- that changed it; `version` is the Kafka offset of that message on the account's
-- partition (an account's log is one partition, so it only grows). argMax(x, version) or
-- FINAL gives the current row.
CREATE TABLE IF NOT EXISTS account_balances (
    account_id String,
    balance Int64,
    -- active | suspended | kept | cancelling | frozen | closed
    state String,
    plan_id String DEFAULT '',
    updated_time DateTime('UTC'),
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY account_id;
