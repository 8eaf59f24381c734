-- 011_bounded_buckets.sql — buckets and hourly consumption of a time range read only the readings that can
-- cover it (docs/storage-model.md, "Reading a time range").
--
-- The views of 009 and 010 filter on bucket_start or hour after computing every bucket, so a range of an hour
-- read every reading ever stored: the fleet dashboard's panels, and the CSV export, which asks each device's
-- hours of the range (all of the device's readings, months of them, instead of the range's). A reading that
-- covers a bucket has its device time in [bucket start, bucket start + MAX_SPAN): its period ends after the
-- bucket, and it spans at most pulsestack.wire.reading.MAX_BUCKETS (240) buckets of the widest width
-- (3600 s), plus the quarter hour a callback's time may lie after its period end. With that bound on
-- device_time the planner prunes the monthly partitions and, for one device, walks the readings' primary key
-- (device, device_time, seq) over the range only. The functions are plain SQL and STABLE, so PostgreSQL
-- inlines them into the query that calls them, and a filter on protocol and device_id still reaches that key.
--
-- The views stay, for answers without a range; they are the functions over all time.
DROP VIEW consumption_hourly;
DROP VIEW buckets;

CREATE FUNCTION buckets_between(lo timestamptz, hi timestamptz)
RETURNS TABLE (protocol text, device_id text, bucket_start timestamptz, bucket_seconds integer, count integer,
               device_time timestamptz, seq bigint)
LANGUAGE sql STABLE AS $$
SELECT DISTINCT ON (d.protocol, d.device_id, b.bucket_start, r.bucket_seconds)
       d.protocol, d.device_id, b.bucket_start, r.bucket_seconds, b.count, r.device_time, r.seq
FROM readings r
JOIN devices d ON d.id = r.device
CROSS JOIN LATERAL (
    SELECT CASE d.protocol WHEN 'nbiot' THEN r.device_time
           ELSE r.device_time - make_interval(secs => floor(extract(epoch FROM r.device_time))::bigint % 900)
           END AS period_end
) e
CROSS JOIN LATERAL (
    SELECT e.period_end - make_interval(secs => (cardinality(r.counts) - u.i + 1) * r.bucket_seconds) AS bucket_start,
           u.count
    FROM unnest(r.counts) WITH ORDINALITY AS u(count, i)
) b
-- MAX_SPAN: 240 buckets × 3600 s + 900 s.
WHERE r.device_time >= lo AND r.device_time < hi + interval '864900 seconds'
  AND b.bucket_start >= lo AND b.bucket_start < hi
ORDER BY d.protocol, d.device_id, b.bucket_start, r.bucket_seconds, r.device_time DESC, r.seq DESC
$$;

-- Per device and UTC hour of [lo, hi) (lo and hi on the hour): the winning buckets' counts plus the gap part.
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

CREATE VIEW buckets AS SELECT * FROM buckets_between('-infinity', 'infinity');
CREATE VIEW consumption_hourly AS SELECT * FROM consumption_hourly_between('-infinity', 'infinity');

-- The read API and the dashboards read them. A function runs with its caller's rights (the views too, since
-- they call it), so the reader's SELECT on readings, devices and gap_hourly is what it reads with.
REVOKE ALL ON FUNCTION buckets_between(timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION consumption_hourly_between(timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION buckets_between(timestamptz, timestamptz) TO pulsestack_reader;
GRANT EXECUTE ON FUNCTION consumption_hourly_between(timestamptz, timestamptz) TO pulsestack_reader;
GRANT SELECT ON buckets, consumption_hourly TO pulsestack_reader;
