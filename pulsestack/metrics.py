"""Every metric pulsestack exports, in one place (docs/metrics.md lists them for dashboards and alerts)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from pulsestack.wire.codecs import PROTOCOLS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

REJECT_REASONS = (
    "malformed", "misaligned", "unknown_device", "bad_tag", "clock", "unauthorized", "too_large",
    "unsupported_media_type", "bad_json", "bad_field", "payload", "overloaded",
)

ingest_received = Counter(
    "pulsestack_ingest_received", "Datagrams or requests received by an ingester", ["protocol"]
)
ingest_accepted = Counter(
    "pulsestack_ingest_accepted", "Readings published to RAW (duplicates included)", ["protocol"]
)
ingest_rejected = Counter(
    "pulsestack_ingest_rejected", "Inputs turned away, by reason", ["protocol", "reason"]
)
ingest_duplicates = Counter(
    "pulsestack_ingest_duplicates", "Readings known to be duplicates at ingest", ["protocol"]
)
ingest_events = Counter(
    "pulsestack_ingest_events",
    "Network-server events answered without a reading (joins, status, acks, ...), by event", ["protocol", "event"],
)
udp_kernel_drops = Counter(
    "pulsestack_ingest_udp_kernel_drops", "Datagrams the kernel dropped on the ingest socket (buffer full)"
)
bus_publish_seconds = Histogram(
    "pulsestack_bus_publish_seconds", "Publish to PubAck", ["stream"], buckets=LATENCY_BUCKETS
)
processor_batch_size = Histogram(
    "pulsestack_processor_batch_size", "Readings per processed batch", ["stage"], buckets=BATCH_BUCKETS
)
processor_messages = Counter(
    "pulsestack_processor_messages", "Readings handled by a processor, by outcome", ["stage", "outcome"]
)
processor_db_write_seconds = Histogram(
    "pulsestack_processor_db_write_seconds", "One batch transaction", ["stage"], buckets=LATENCY_BUCKETS
)
end_to_end_seconds = Histogram(
    "pulsestack_end_to_end_seconds",
    "Received at the ingester to committed (stored and derived)",
    ["protocol"],
    buckets=LATENCY_BUCKETS,
)
quarantined = Counter("pulsestack_quarantined", "Readings sent to QUARANTINE", ["stage", "reason"])
dead_letters = Counter("pulsestack_dead_letters", "Messages moved to DEAD after max_deliver", ["stage"])
device_gaps = Counter("pulsestack_device_gaps", "Non-zero gap volumes or boundary adjustments recorded")
bucket_conflicts = Counter(
    "pulsestack_bucket_conflicts", "Buckets claimed by two different readings"
)
meter_resets = Counter("pulsestack_meter_resets", "Index decreases read as meter reset or replacement")
stream_pending = Gauge(
    "pulsestack_stream_pending", "Messages not yet delivered to a consumer", ["stream", "consumer"]
)
stream_ack_pending = Gauge(
    "pulsestack_stream_ack_pending", "Messages delivered but not yet acknowledged", ["stream", "consumer"]
)
stream_oldest_unprocessed = Gauge(
    "pulsestack_stream_oldest_unprocessed_seconds",
    "Age of the oldest message a consumer has not acknowledged (0 when it has processed everything)",
    ["stream", "consumer"],
)
stream_bytes = Gauge("pulsestack_stream_bytes", "Bytes a stream holds", ["stream"])
stream_max_bytes = Gauge("pulsestack_stream_max_bytes", "A stream's byte limit", ["stream"])
alerts = Counter("pulsestack_alerts", "Alert events published, by kind", ["kind", "event"])
notifications = Counter("pulsestack_notifications", "Webhook deliveries by outcome", ["outcome"])
notification_seconds = Histogram(
    "pulsestack_notification_seconds", "One webhook delivery attempt", buckets=LATENCY_BUCKETS
)
silent_sweep_seconds = Histogram(
    "pulsestack_silent_sweep_seconds", "One sweep over all device states", buckets=LATENCY_BUCKETS
)
http_connections_open = Gauge(
    "pulsestack_http_connections_open", "Client connections open on an HTTP service", ["service"]
)
http_connections_refused = Counter(
    "pulsestack_http_connections_refused",
    "Client connections closed by a limit: too_many (answered 503), header_timeout or body_timeout (408)",
    ["service", "reason"],
)
partitions_ahead = Gauge(
    "pulsestack_partitions_ahead_months", "Months from this month to the last monthly partition", ["table"]
)
default_partition_rows = Gauge(
    "pulsestack_default_partition_rows", "Rows in a table's default partition (none when maintenance runs)",
    ["table"],
)
maintenance_last_success = Gauge(
    "pulsestack_maintenance_last_success_timestamp_seconds", "When this instance last finished a maintenance run"
)
registry_devices = Gauge(
    "pulsestack_registry_devices", "Registered, enabled devices known to this ingester", ["protocol"]
)


OUTCOMES = ("stored", "duplicate", "quarantined", "redelivered", "dead")


def prime_stage(stage: str) -> None:
    """A processor's series exist from its start, at zero, so rates and alerts have data."""
    for outcome in OUTCOMES:
        processor_messages.labels(stage, outcome)
    dead_letters.labels(stage)


def prime() -> None:
    """Create every label combination so dashboards and alerts see zeros, not absent series."""
    for protocol in PROTOCOLS:
        ingest_received.labels(protocol)
        ingest_accepted.labels(protocol)
        ingest_duplicates.labels(protocol)
        for reason in REJECT_REASONS:
            ingest_rejected.labels(protocol, reason)


@dataclass(frozen=True, slots=True)
class IngestCounters:
    """One protocol's ingest counters, each labelled child looked up once: `labels()` on every datagram or
    callback takes a lock and hashes the labels, a measurable share of an ingester's time per input."""

    received: Counter
    accepted: Counter
    duplicates: Counter
    rejected: dict[str, Counter]  # by reason, every one of REJECT_REASONS

    @classmethod
    def of(cls, protocol: str) -> IngestCounters:
        return cls(
            ingest_received.labels(protocol), ingest_accepted.labels(protocol), ingest_duplicates.labels(protocol),
            {reason: ingest_rejected.labels(protocol, reason) for reason in REJECT_REASONS},
        )
