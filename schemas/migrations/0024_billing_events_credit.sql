-- Issue 23 (term packages): ledger events that move package credit. One ALTER, alone in
-- its file.
--   credit_change  what the event did to the credit: + granted (PackagePurchased,
--                  PackageRenewed), - drawn (MinimumSpendTrueUp, EarlyTerminationCharged)
--                  or ended (PackageCreditExpired: the breakage when forfeited)
--   credit         the package credit right after the event
-- An account's funds (balance + credit) are sum(opening_balance + amount + credit_change)
-- over its billing_events minus sum(amount) over its rated_calls.
ALTER TABLE billing_events ADD COLUMN credit_change Int64 DEFAULT 0, ADD COLUMN credit Int64 DEFAULT 0;
