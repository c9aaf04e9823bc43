-- Issue 23 (term packages): each account's package credit after a batch, and when it ends
-- (ISO 8601 with offset; '' when the account has no credit). One ALTER, alone in its file.
ALTER TABLE account_balances ADD COLUMN credit Int64 DEFAULT 0, ADD COLUMN credit_expires String DEFAULT '';
