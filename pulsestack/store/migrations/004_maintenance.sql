-- Maintenance inside the stack: the alerting service creates partitions ahead and applies retention
-- (pulsestack/store/maintenance.py). Partition DDL needs the tables' owner, so it runs through two
-- SECURITY DEFINER functions that do exactly that and nothing else; the service's role gets EXECUTE on
-- them and DELETE on the tables retention trims row by row.

ALTER FUNCTION pulsestack_ensure_partition(regclass, text, date) SECURITY DEFINER SET search_path = public, pg_temp;

-- Detaches and drops one monthly partition of `parent`. Plain DETACH, not CONCURRENTLY: PostgreSQL refuses
-- CONCURRENTLY on a table with a default partition, and the default partition is what keeps a reading with
-- an odd device time stored rather than refused. The lock it takes on the parent is brief (no scan); a short
-- lock_timeout makes a busy moment a retry at the next run, not a queue of blocked writers.
CREATE FUNCTION pulsestack_drop_partition(parent regclass, partition_name text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF partition_name !~ ('^' || parent::text || '_y[0-9]{4}m[0-9]{2}$') OR NOT EXISTS (
        SELECT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = parent AND c.relname = partition_name
    ) THEN
        RAISE EXCEPTION '% is not a monthly partition of %', partition_name, parent;
    END IF;
    PERFORM set_config('lock_timeout', '5s', true);
    EXECUTE format('ALTER TABLE %s DETACH PARTITION %I', parent, partition_name);
    EXECUTE format('DROP TABLE %I', partition_name);
END $$;

REVOKE ALL ON FUNCTION pulsestack_ensure_partition(regclass, text, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION pulsestack_drop_partition(regclass, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pulsestack_ensure_partition(regclass, text, date) TO pulsestack_alerting;
GRANT EXECUTE ON FUNCTION pulsestack_drop_partition(regclass, text) TO pulsestack_alerting;
GRANT SELECT ON raw_messages_default, pulses_default TO pulsestack_alerting;
GRANT SELECT, DELETE ON gaps, meter_events, consumption_hourly, consumption_daily TO pulsestack_alerting;
GRANT DELETE ON alerts TO pulsestack_alerting;
