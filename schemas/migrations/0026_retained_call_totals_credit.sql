-- Issue 23 (term packages): what the calls of a dropped month drew on package credit, so
-- that a statement's opening credit stays exact after `cdrflow retention`. One ALTER,
-- alone in its file.
ALTER TABLE retained_call_totals ADD COLUMN credit_used Int64 DEFAULT 0;
