-- Issue 6: when a rejected line landed in ClickHouse (the server's clock at insert), so
-- finance can count a month's rejects by reason. A rejected line may have no trustworthy
-- time of its own (a malformed line). Rows landed before this migration have no stored
-- value and read the default (the time of the query).
ALTER TABLE rejected_cdrs ADD COLUMN landed_time DateTime DEFAULT now();
