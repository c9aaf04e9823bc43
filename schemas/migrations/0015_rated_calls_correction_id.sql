-- Issue 15 (corrections): which correction made a row of rated_calls. One ALTER, alone in
-- its file (18.16 has no ADD COLUMN IF NOT EXISTS).
--   correction_id  '' for a call as the worker first rated it; else the id of the
--                  `cdrflow rerate --apply` run whose CallRerated made this version (its
--                  `version` is then the correction message's offset + 1, above every
--                  earlier version). A first-rating row that a correction replaced is
--                  written once more with the correction's id, for the history below.
ALTER TABLE rated_calls ADD COLUMN correction_id String DEFAULT '';
