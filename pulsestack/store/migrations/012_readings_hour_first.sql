-- 012_readings_hour_first.sql — readings' primary key leads with the hour of the reading's device time
-- (docs/storage-model.md, "Key order"). Led by the device, every reading of a meter that reports hourly went
-- to its meter's own leaf page, a page no other reading of its checkpoint cycle touched, and the first change
-- of a page after a checkpoint writes the whole page to WAL: about 4 kB of WAL per reading
-- (bench/results/2026-12-06-vm-hourly-wal.md). Led by the hour, a cycle's readings share the few leaf pages
-- of the hours being reported. A device's readings over a range are still one index walk per hour of it
-- (B-tree skip scan, PostgreSQL 18), which every query on readings bounds with reading_hour.

-- Hours since 1970-01-01 UTC of a device time: the column's generation and every query's bound, one rule.
-- The infinities (the views' whole range) map to integer's ends, so a bound taken from them holds every hour.
CREATE FUNCTION reading_hour(t timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN CASE WHEN t = timestamptz '-infinity' THEN -2147483648
            WHEN t = timestamptz 'infinity' THEN 2147483647
            ELSE floor(extract(epoch FROM t - timestamptz '1970-01-01 00:00:00+00') / 3600)::integer END;
REVOKE ALL ON FUNCTION reading_hour(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION reading_hour(timestamptz) TO pulsestack_raw, pulsestack_reader;

-- Rewrites every partition and builds the new key: downtime proportional to the readings kept.
ALTER TABLE readings ADD COLUMN device_hour integer NOT NULL GENERATED ALWAYS AS (reading_hour(device_time)) STORED;
ALTER TABLE readings DROP CONSTRAINT readings_pkey;
ALTER TABLE readings ADD PRIMARY KEY (device_hour, device, device_time, seq);

-- A new month's partition copies the generated column, and the rows the default partition caught move into it
-- by their stored columns (a generated one is computed again, never inserted).
CREATE OR REPLACE FUNCTION pulsestack_ensure_partition(parent regclass, key_column text, month date)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    lo timestamptz := date_trunc('month', month::timestamp) AT TIME ZONE 'UTC';
    hi timestamptz := (date_trunc('month', month::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    name text := format('%s_y%sm%s', parent::text, to_char(lo AT TIME ZONE 'UTC', 'YYYY'),
                        to_char(lo AT TIME ZONE 'UTC', 'MM'));
    stored text := (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
                    WHERE attrelid = parent AND attnum > 0 AND NOT attisdropped AND attgenerated = '');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED)',
                   name, parent);
    EXECUTE format('WITH moved AS (DELETE FROM %s WHERE %I >= %L AND %I < %L RETURNING %s) '
                   'INSERT INTO %I (%s) SELECT * FROM moved',
                   parent::text || '_default', key_column, lo, key_column, hi, stored, name, stored);
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, name, lo, hi);
END $$;

-- 009's function with the hours of its device-time bound: one index walk per hour of the range, not per hour
-- of every partition.
CREATE OR REPLACE FUNCTION buckets_between(lo timestamptz, hi timestamptz)
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
  AND r.device_hour BETWEEN reading_hour(lo) AND reading_hour(hi + interval '864900 seconds')
  AND b.bucket_start >= lo AND b.bucket_start < hi
ORDER BY d.protocol, d.device_id, b.bucket_start, r.bucket_seconds, r.device_time DESC, r.seq DESC
$$;
