"""When an alert opens or closes, and how the world hears of it: the one owner of alerts.

- `rules`: what a device's state implies once a reading is stored (its flags, a leak, silence broken): pure,
  tested alone (tests/test_unit_alert_rules.py).
- `changes`: the alerts table's writes in the raw stage's transaction: what the rules decided, and the daily
  threshold against each device's own limit (set-based SQL).
- `sweep`: what only the passing of time decides: silent meters, and the end of a threshold alert's day.
- `outbox`: each change as an event on the ALERTS stream, after commit; the sweep publishes what a crash left.

A device's settings and their defaults (time zone UTC, pulse weight 1) are SQL functions of migration 011
(`device_time_zone`, `device_pulse_weight`), which every day boundary and volume here and in the API reads.
"""
