-- Issue 25 (the arrears lifecycle): each account's next lifecycle deadline after a batch,
-- for `cdrflow account show`: next_step is frozen, released or closed ('' when none falls
-- due) and next_step_at its instant (ISO 8601 with offset). One ALTER, alone in its file.
ALTER TABLE account_balances ADD COLUMN next_step String DEFAULT '', ADD COLUMN next_step_at String DEFAULT '';
