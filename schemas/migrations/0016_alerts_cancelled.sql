-- Issue 15 (corrections): an alert that a correction takes back. One ALTER, alone in its
-- file. A correction re-evaluates the alerts on the corrected history: an alert that no
-- longer holds is inserted again with a higher `version` and cancelled = 1, so that
-- `FINAL` keeps the cancelled copy; `cdrflow export`, the reports and the notifier leave
-- cancelled alerts out (read FINAL first, then drop cancelled rows: a WHERE on a column a
-- newer version changes must not run before the copies collapse, docs/finance.md).
ALTER TABLE alerts ADD COLUMN cancelled UInt8 DEFAULT 0;
