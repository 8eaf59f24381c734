-- 010_gap_hourly.sql — v2 step 2b (docs/storage-model.md): an hour's consumption is its winning buckets
-- (from readings) plus the gap volume spread over it; only the gap part is stored, in the few hours gaps
-- cover. The old table is kept under another name until `pulsestack migrate` has filled gap_hourly from
-- gaps (pulsestack.store.gap_hourly), then dropped.
ALTER TABLE consumption_hourly RENAME TO consumption_hourly_v1;
CREATE TABLE gap_hourly (
    protocol  text        NOT NULL,
    device_id text        NOT NULL,
    hour      timestamptz NOT NULL,
    pulses    bigint      NOT NULL,
    PRIMARY KEY (protocol, device_id, hour)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON gap_hourly TO pulsestack_raw;
GRANT SELECT, DELETE ON gap_hourly TO pulsestack_alerting;
GRANT SELECT ON gap_hourly TO pulsestack_reader;

-- What the API, the dashboards and the tests read as before: per device and UTC hour of [lo, hi) (on the hour),
-- the winning buckets' counts plus the gap part; over a range it reads only the readings that can cover it
-- (buckets_between, 009). The view is the function over all time.
CREATE FUNCTION consumption_hourly_between(lo timestamptz, hi timestamptz)
RETURNS TABLE (protocol text, device_id text, hour timestamptz, pulses bigint)
LANGUAGE sql STABLE AS $$
SELECT h.protocol, h.device_id, h.hour, sum(h.pulses)::bigint
FROM (
    SELECT b.protocol, b.device_id, date_trunc('hour', b.bucket_start, 'UTC') AS hour, b.count::bigint AS pulses
    FROM buckets_between(lo, hi) b
    UNION ALL
    SELECT g.protocol, g.device_id, g.hour, g.pulses FROM gap_hourly g WHERE g.hour >= lo AND g.hour < hi
) h
GROUP BY h.protocol, h.device_id, h.hour
$$;
CREATE VIEW consumption_hourly AS SELECT * FROM consumption_hourly_between('-infinity', 'infinity');
REVOKE ALL ON FUNCTION consumption_hourly_between(timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION consumption_hourly_between(timestamptz, timestamptz) TO pulsestack_reader;
GRANT SELECT ON consumption_hourly TO pulsestack_reader;
