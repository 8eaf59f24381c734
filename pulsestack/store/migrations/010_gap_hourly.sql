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

-- What the API, the dashboards and the tests read as before: per device and UTC hour, the winning buckets'
-- counts plus the gap part. A filter on protocol and device reaches the readings' primary key.
CREATE VIEW consumption_hourly AS
SELECT protocol, device_id, hour, sum(pulses)::bigint AS pulses
FROM (
    SELECT protocol, device_id, date_trunc('hour', bucket_start, 'UTC') AS hour, count::bigint AS pulses
    FROM buckets
    UNION ALL
    SELECT protocol, device_id, hour, pulses FROM gap_hourly
) h
GROUP BY protocol, device_id, hour;
GRANT SELECT ON consumption_hourly TO pulsestack_reader, pulsestack_alerting, pulsestack_raw;
