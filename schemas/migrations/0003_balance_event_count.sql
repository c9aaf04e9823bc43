-- How many ledger events (billing_events rows) the account's log had produced when its
-- balance row was written: a command waits until billing_events holds that many for the
-- account, since each table lands through its own sink (issue 5).
ALTER TABLE account_balances ADD COLUMN events UInt64 DEFAULT 0;
