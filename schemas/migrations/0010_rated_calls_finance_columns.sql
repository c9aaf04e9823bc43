-- Issue 6 (finance): what the reports need of a call beside its price. One ALTER, alone in
-- its file (18.16 has no ADD COLUMN IF NOT EXISTS). Rows landed before it read the
-- defaults: '' and -1 mean "not recorded".
--   disposition  the CDR's disposition (ANSWERED, NO ANSWER, BUSY, FAILED, CONGESTION):
--                missed calls are the ones not ANSWERED
--   caller       the calling number; caller_area its area code (call origin)
--   billsec      talk time in whole seconds (duration distribution, usage minutes)
--   local_hour   hour of day (0-23) of the charge time in the plan's timezone
ALTER TABLE rated_calls
    ADD COLUMN disposition String DEFAULT '',
    ADD COLUMN caller String DEFAULT '',
    ADD COLUMN caller_area String DEFAULT '',
    ADD COLUMN billsec Int64 DEFAULT -1,
    ADD COLUMN local_hour Int8 DEFAULT -1;
