-- One transaction stores a reading and derives from it (docs/storage-model.md): the raw stage's role takes
-- over what the pulse stage's role could do, and that role goes.
GRANT SELECT ON devices TO pulsestack_raw;
GRANT SELECT, INSERT, UPDATE, DELETE ON pulses, gaps, meter_events, device_state, consumption_hourly,
    consumption_daily, alerts TO pulsestack_raw;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'pulsestack_pulse') THEN
        -- Its grants in this database; it owns nothing. Revoked rather than DROP OWNED, which needs the
        -- role's privileges: the schema's owner, which runs the migrations, holds ADMIN on it only.
        EXECUTE 'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM pulsestack_pulse';
        EXECUTE 'REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM pulsestack_pulse';
        EXECUTE 'DROP ROLE pulsestack_pulse';
    END IF;
END $$;
