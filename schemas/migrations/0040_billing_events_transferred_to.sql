-- Issue 25 (number transfer): a NumberTransferred event on the log of the account a number
-- left names the account it went to ('' on every other event, and on the new account's
-- NumberTransferred). Finance lists transfers from these rows (cdrflow report transfers).
-- One ALTER, alone in its file.
ALTER TABLE billing_events ADD COLUMN transferred_to String DEFAULT '';
