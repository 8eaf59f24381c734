-- pulsestack schema, version 1.
-- Time series are partitioned by month of *device* time; the partition key is
-- part of every unique key, so deduplication holds across months.

CREATE TABLE devices (
    protocol     text        NOT NULL CHECK (protocol ~ '^[a-z][a-z0-9_]*$'),
    device_id    text        NOT NULL,               -- canonical text form
    shard        smallint    NOT NULL,               -- registry KV shard (device number % 1024)
    key_version  integer     NOT NULL DEFAULT 0,     -- keys are derived: master secret + id + version
    label        text,
    settings     jsonb       NOT NULL DEFAULT '{}',  -- per-device settings (time zone, limits, ...)
    disabled     boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (protocol, device_id)
);
CREATE INDEX devices_enabled_by_shard ON devices (protocol, shard) WHERE NOT disabled;

CREATE SEQUENCE raw_messages_id_seq AS bigint;

CREATE TABLE raw_messages (
    id             bigint      NOT NULL DEFAULT nextval('raw_messages_id_seq'),
    protocol       text        NOT NULL,
    device_id      text        NOT NULL,
    seq            bigint      NOT NULL,
    device_time    timestamptz NOT NULL,
    period_end     timestamptz NOT NULL,
    bucket_seconds integer     NOT NULL,
    counts         integer[]   NOT NULL,
    meter_index    bigint      NOT NULL,
    battery_mv     integer     NOT NULL,
    flags          integer     NOT NULL,
    received_at    timestamptz NOT NULL,
    stored_at      timestamptz NOT NULL DEFAULT now(),
    trace_id       text        NOT NULL,
    payload        bytea       NOT NULL,
    meta           jsonb,
    PRIMARY KEY (id, device_time),
    UNIQUE (protocol, device_id, seq, device_time)
) PARTITION BY RANGE (device_time);
ALTER SEQUENCE raw_messages_id_seq OWNED BY raw_messages.id;
-- The pulse stage finds a late reading's neighbours in period order.
CREATE INDEX raw_messages_by_period ON raw_messages (protocol, device_id, period_end, device_time, seq);

CREATE TABLE pulses (
    protocol       text        NOT NULL,
    device_id      text        NOT NULL,
    bucket_start   timestamptz NOT NULL,
    bucket_seconds integer     NOT NULL,
    count          integer     NOT NULL,
    raw_id         bigint      NOT NULL,  -- the reading that won this bucket
    device_time    timestamptz NOT NULL,  -- its device time and seq decide conflicts
    seq            bigint      NOT NULL,
    stored_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (protocol, device_id, bucket_start, bucket_seconds)
) PARTITION BY RANGE (bucket_start);

-- Volume the index says flowed but no bucket covers, between two consecutive
-- readings (keyed by the earlier one, so recomputation replaces it).
CREATE TABLE gaps (
    protocol        text        NOT NULL,
    device_id       text        NOT NULL,
    from_period_end timestamptz NOT NULL,
    from_seq        bigint      NOT NULL,
    to_period_end   timestamptz NOT NULL,
    to_seq          bigint      NOT NULL,
    interval_start  timestamptz NOT NULL,
    interval_end    timestamptz NOT NULL,  -- equal to interval_start for a boundary adjustment
    volume          bigint      NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('gap', 'adjustment')),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (protocol, device_id, from_period_end, from_seq)
);

CREATE TABLE meter_events (
    protocol    text        NOT NULL,
    device_id   text        NOT NULL,
    at          timestamptz NOT NULL,  -- period end of the reading that showed it
    seq         bigint      NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('reset')),
    from_index  bigint      NOT NULL,
    to_index    bigint      NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (protocol, device_id, at, seq, kind)
);

CREATE TABLE device_state (
    protocol        text        NOT NULL,
    device_id       text        NOT NULL,
    last_period_end timestamptz NOT NULL,
    last_device_time timestamptz NOT NULL,
    last_seq        bigint      NOT NULL,
    last_index      bigint      NOT NULL,
    last_raw_id     bigint      NOT NULL,
    last_battery_mv integer     NOT NULL,
    last_flags      integer     NOT NULL,
    last_seen       timestamptz NOT NULL,  -- receive time, for silence detection
    readings        bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (protocol, device_id)
);

-- Creates the monthly partition holding `month` for `parent`, moving any rows
-- the default partition caught for that month into it first.
CREATE FUNCTION pulsestack_ensure_partition(parent regclass, key_column text, month date)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz := date_trunc('month', month::timestamp) AT TIME ZONE 'UTC';
    hi timestamptz := (date_trunc('month', month::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    name text := format('%s_y%sm%s', parent::text, to_char(lo AT TIME ZONE 'UTC', 'YYYY'),
                        to_char(lo AT TIME ZONE 'UTC', 'MM'));
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name, parent);
    EXECUTE format('WITH moved AS (DELETE FROM %s WHERE %I >= %L AND %I < %L RETURNING *) '
                   'INSERT INTO %I SELECT * FROM moved',
                   parent::text || '_default', key_column, lo, key_column, hi, name);
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, name, lo, hi);
END $$;

CREATE TABLE raw_messages_default PARTITION OF raw_messages DEFAULT;
CREATE TABLE pulses_default PARTITION OF pulses DEFAULT;

-- Least privilege: one role per service. Passwords are set by `pulsestack migrate`
-- from secret files, never here.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['pulsestack_raw', 'pulsestack_pulse', 'pulsestack_registry', 'pulsestack_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        END IF;
    END LOOP;
END $$;

GRANT SELECT, INSERT ON raw_messages TO pulsestack_raw;
GRANT USAGE ON SEQUENCE raw_messages_id_seq TO pulsestack_raw;
GRANT SELECT ON raw_messages TO pulsestack_pulse;
GRANT SELECT, INSERT, UPDATE, DELETE ON pulses, gaps, meter_events, device_state TO pulsestack_pulse;
GRANT SELECT, INSERT, UPDATE, DELETE ON devices TO pulsestack_registry;
GRANT SELECT ON devices, raw_messages, pulses, gaps, meter_events, device_state TO pulsestack_reader;
