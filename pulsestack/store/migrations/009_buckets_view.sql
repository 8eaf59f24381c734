-- 009_buckets_view.sql — v2 step 2 (docs/storage-model.md): a bucket's answer is computed from the readings
-- covering it; the pulses table (one row per bucket) goes.
DROP TABLE pulses CASCADE;

-- The winner of a bucket: the reading covering it with the latest (device_time, seq), the rule
-- pulsestack.store.pulses.bucket_winners applies (tests/test_buckets_view.py proves them equal). A reading's
-- period end is its codec's (Codec.period_end): NB-IoT's device time, Sigfox's and LoRaWAN's device time
-- rounded down to the quarter hour. DISTINCT ON names the device by its canonical key, so a filter on
-- protocol and device_id reaches the readings' primary key.
CREATE VIEW buckets AS
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
ORDER BY d.protocol, d.device_id, b.bucket_start, r.bucket_seconds, r.device_time DESC, r.seq DESC;
GRANT SELECT ON buckets TO pulsestack_reader;
