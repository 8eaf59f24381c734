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
-- grants: as raw_messages had them (pulsestack_raw SELECT, INSERT; reader SELECT; alerting SELECT on the
-- default partition, partition functions), plus SELECT on devices(id) where a role needs the mapping.
GRANT SELECT, INSERT ON readings TO pulsestack_raw;
GRANT SELECT ON readings TO pulsestack_reader;
GRANT SELECT ON readings_default TO pulsestack_alerting;
