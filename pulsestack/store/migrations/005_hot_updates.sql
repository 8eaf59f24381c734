-- Lean writes (#18): every reading updates its device's device_state row and its day's consumption_daily
-- row. PostgreSQL can do that as a HOT update (the new row version on the same page, no index touched, far
-- less WAL) only if no indexed column changes and the page has room.
--
-- device_state_last_seen made every device_state update a full one (last_seen changes with each reading)
-- and no query needs it: the silent sweep compares each device with its own interval, a condition an
-- index on last_seen cannot answer, so it scans device_state once per sweep; the fleet dashboard's counts
-- of devices heard recently cover most of the fleet, where a scan is what the planner picks anyway.
DROP INDEX IF EXISTS device_state_last_seen;

-- Room on each page for the next versions of its rows (new pages only; existing ones gain it as rows move).
-- consumption_hourly keeps the default: an hour's row is written by the reading that covers it and rarely
-- again, so free space there would only cost disk.
ALTER TABLE device_state SET (fillfactor = 70);
ALTER TABLE consumption_daily SET (fillfactor = 70);
