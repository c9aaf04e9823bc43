-- Issue 21 (several records of one call): Asterisk writes a record per party a channel
-- dialled, all with the channel's uniqueid, so one call's 0 s unanswered leg and its
-- answered leg share a cdr_id (docs/rules.md, "Several records of one call"). Rating
-- keeps both (an unbilled row and a rated one); keyed by (account_id, cdr_id) alone they
-- would collapse here into one. `record` tells them apart: '' for a record that would be
-- billed (and every row from before), 'unbilled' for one that would not (status unbilled).
-- A replayed row still collapses with its copy; a correction still replaces its row.
-- 18.16 takes a new sorting-key column only without a DEFAULT expression ('' anyway).
ALTER TABLE rated_calls ADD COLUMN record String, MODIFY ORDER BY (account_id, cdr_id, record);
