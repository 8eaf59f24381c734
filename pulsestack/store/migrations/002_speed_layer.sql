-- Speed layer: consumption rollups kept in the pulse stage's transaction, alerts, and what they need.

-- Per-device settings read by the pulse stage (devices.settings, JSON):
--   timezone     IANA name for days (default UTC)
--   pulse_weight litres (or the meter's unit) per pulse (default 1)
--   daily_limit  in that unit; absent means no threshold alert
GRANT SELECT ON devices TO pulsestack_pulse;

ALTER TABLE device_state
    ADD COLUMN interval_seconds  integer,      -- reporting interval inferred from receive times
    ADD COLUMN first_bucket      timestamptz,  -- start of the earliest bucket seen
    ADD COLUMN last_zero_flow    timestamptz,  -- end of the latest zero-flow bucket seen
    ADD COLUMN finest_bucket     integer;      -- narrowest bucket width seen, in seconds
CREATE INDEX device_state_last_seen ON device_state (last_seen);

-- Pulses per device and UTC hour / device-local day; gap volume is spread over the hours it covers.
CREATE TABLE consumption_hourly (
    protocol  text        NOT NULL,
    device_id text        NOT NULL,
    hour      timestamptz NOT NULL,
    pulses    bigint      NOT NULL,
    PRIMARY KEY (protocol, device_id, hour)
);
CREATE TABLE consumption_daily (
    protocol  text   NOT NULL,
    device_id text   NOT NULL,
    day       date   NOT NULL,  -- in the device's time zone
    pulses    bigint NOT NULL,
    PRIMARY KEY (protocol, device_id, day)
);

CREATE TABLE alerts (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    protocol           text        NOT NULL,
    device_id          text        NOT NULL,
    kind               text        NOT NULL
        CHECK (kind IN ('leak', 'threshold', 'silent', 'tamper', 'reverse_flow', 'battery_low')),
    opened_at          timestamptz NOT NULL DEFAULT now(),
    resolved_at        timestamptz,
    day                date,  -- the device-local day of a threshold alert
    detail             jsonb       NOT NULL DEFAULT '{}',
    -- Outbox: events are published on NATS after commit; a sweep republishes what a crash left behind.
    published_open     boolean     NOT NULL DEFAULT false,
    published_resolved boolean     NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX alerts_one_open_per_kind ON alerts (protocol, device_id, kind) WHERE resolved_at IS NULL;
CREATE UNIQUE INDEX alerts_threshold_once_a_day ON alerts (protocol, device_id, day) WHERE kind = 'threshold';
CREATE INDEX alerts_unpublished ON alerts (id)
    WHERE NOT published_open OR (resolved_at IS NOT NULL AND NOT published_resolved);

GRANT SELECT, INSERT, UPDATE, DELETE ON consumption_hourly, consumption_daily, alerts TO pulsestack_pulse;
GRANT SELECT ON consumption_hourly, consumption_daily, alerts TO pulsestack_reader;

-- The alerting service (silent-meter sweep, day-end resolution, outbox, notifier).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pulsestack_alerting') THEN
        CREATE ROLE pulsestack_alerting LOGIN;
    END IF;
END $$;
GRANT SELECT ON devices, device_state TO pulsestack_alerting;
GRANT SELECT, INSERT, UPDATE ON alerts TO pulsestack_alerting;
