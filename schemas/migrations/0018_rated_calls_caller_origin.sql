-- Issue 21 (switch feeds): how the caller of a rated call was placed. One ALTER, alone in
-- its file (18.16 has no ADD COLUMN IF NOT EXISTS).
--   caller_origin  'area'      its number carries its area code (or a canonical caller_area);
--                  'same_city' a number without area code, placed in the answering side's
--                              city (or the switch profile's default_area);
--                  'unknown'   no area at all (withheld, masked, an extension): the call's
--                              class is its plan version's unknown_caller_class;
--                  ''          rated before this column existed.
ALTER TABLE rated_calls ADD COLUMN caller_origin String DEFAULT '';
