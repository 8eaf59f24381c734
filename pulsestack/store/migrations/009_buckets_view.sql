-- 009_buckets_view.sql — v2 step 2 (docs/storage-model.md): a bucket's answer is computed from the readings
-- covering it; the pulses table (one row per bucket) goes.
DROP TABLE pulses CASCADE;

-- The winner of a bucket: the reading covering it with the latest (device_time, seq), the rule
-- pulsestack.store.pulses.bucket_winners applies (tests/test_buckets_view.py proves them equal). A reading's
-- period end is its codec's (Codec.period_end): NB-IoT's device time, Sigfox's and LoRaWAN's device time
-- rounded down to the quarter hour. DISTINCT ON names the device by its canonical key, so a filter on
-- protocol and device_id reaches the readings' primary key.
-- A range, [lo, hi) of bucket start, reads only the readings that can cover it: such a reading's device time
-- lies in [bucket start, bucket start + MAX_SPAN), its period end being after the bucket and a reading spanning
-- at most pulsestack.wire.reading.MAX_BUCKETS (240) buckets of the widest width (3600 s), plus the quarter hour
-- a callback's time may lie after its period end. With that bound on device_time the planner prunes the
-- monthly partitions and, for one device, walks the readings' primary key over the range only (a filter on
-- bucket start alone cannot reach it through DISTINCT ON). Plain STABLE SQL: PostgreSQL inlines the function
-- into the calling query, so a filter on protocol and device_id still reaches that key. The view is the
-- function over all time.
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

CREATE VIEW buckets AS SELECT * FROM buckets_between('-infinity', 'infinity');

-- A function runs with its caller's rights (the view too, since it calls it): the reader reads with its own
-- SELECT on readings and devices.
REVOKE ALL ON FUNCTION buckets_between(timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION buckets_between(timestamptz, timestamptz) TO pulsestack_reader;
GRANT SELECT ON buckets TO pulsestack_reader;
