-- 008_readings.sql — v2 step 1 (docs/storage-model.md): one lean `readings` row per reading replaces
-- raw_messages; a device gets a compact integer key from the registry.
ALTER TABLE devices ADD COLUMN id integer GENERATED ALWAYS AS IDENTITY;
ALTER TABLE devices ADD CONSTRAINT devices_id_key UNIQUE (id);

CREATE TABLE readings (
    device         integer     NOT NULL,  -- devices.id
    bucket_seconds integer     NOT NULL,
    device_time    timestamptz NOT NULL,
    seq            bigint      NOT NULL,
    meter_index    bigint      NOT NULL,
    received_at    timestamptz NOT NULL,
    counts         integer[]   NOT NULL,
    payload        bytea       NOT NULL,
    meta           jsonb,
    PRIMARY KEY (device, device_time, seq)
) PARTITION BY RANGE (device_time);
CREATE TABLE readings_default PARTITION OF readings DEFAULT;
-- Least privilege as the v1 raw table had it: the raw stage stores readings (and reads them for a late reading's
-- neighbours), the dashboards' role reads them, the alerting service counts what its default partition caught;
-- every one of these roles already reads devices, where a reading's device id maps to its canonical id.
GRANT SELECT, INSERT ON readings TO pulsestack_raw;
GRANT SELECT ON readings TO pulsestack_reader;
GRANT SELECT ON readings_default TO pulsestack_alerting;

-- A reading's identity is (device, device_time, seq): what pointed at a v1 raw row id goes.
ALTER TABLE pulses DROP COLUMN raw_id;
ALTER TABLE device_state DROP COLUMN last_raw_id;
