-- 011_device_settings.sql — a device's settings with their defaults, in one place (002 lists the settings):
-- every day boundary (rollups, threshold alerts and their day's end, the API's daily series) and every volume
-- (threshold alerts, the API) reads them through these, so a default is written once. Inlined by the planner
-- (one SQL expression, IMMUTABLE), so a query that uses them is planned as if it spelled them out. NULL
-- settings (a device not registered) get the defaults.
CREATE FUNCTION device_time_zone(settings jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(settings ->> 'timezone', 'UTC');
CREATE FUNCTION device_pulse_weight(settings jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce((settings ->> 'pulse_weight')::numeric, 1);
REVOKE ALL ON FUNCTION device_time_zone(jsonb), device_pulse_weight(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION device_time_zone(jsonb), device_pulse_weight(jsonb)
    TO pulsestack_raw, pulsestack_alerting, pulsestack_reader;
