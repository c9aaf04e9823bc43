-- Issue 23 (term packages): a call draws on the account's package credit before its
-- balance. One ALTER, alone in its file (18.16 has no ADD COLUMN IF NOT EXISTS).
--   credit_used  the package credit this call drew on (amount - credit_used left the balance)
--   credit       the package credit left after the call (0: none)
-- rated_call_versions keeps the columns it had: a correction moves the balance, never the
-- credit (docs/rules.md "Corrections"), so a call's credit is the same in every version.
ALTER TABLE rated_calls ADD COLUMN credit_used Int64 DEFAULT 0, ADD COLUMN credit Int64 DEFAULT 0;
