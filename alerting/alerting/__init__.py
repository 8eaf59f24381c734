"""The alerting service: the silent-meter sweep, day-end resolution, the alert outbox and the webhook notifier."""
