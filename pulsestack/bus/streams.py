"""The streams, their limits and the processors' durable consumers.

Limits are sized for at least a day of peak traffic; `discard: new` means a
full stream refuses new messages (ingesters then stop acknowledging) instead of
silently dropping old ones it had already acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from pulsestack.config import env_float, env_int
from pulsestack.registry.membership import BUCKET as REGISTRY_BUCKET

RAW = "RAW"
PULSES = "PULSES"
QUARANTINE = "QUARANTINE"
DEAD = "DEAD"
ALERTS = "ALERTS"
RAW_CONSUMER = "raw-processor"
PULSE_CONSUMER = "pulse-processor"
NOTIFIER_CONSUMER = "notifier"
NOTIFIER_MAX_DELIVER = 50
GIB = 1024**3
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class BusLimits:
    replicas: int
    raw_max_bytes: int
    pulses_max_bytes: int
    max_age_seconds: float
    duplicate_window_seconds: float
    max_deliver: int
    ack_wait_seconds: float

    @classmethod
    def from_env(cls) -> BusLimits:
        return cls(
            # 1 on a single node (see docs/durability.md), 3 on the swarm.
            replicas=env_int("PULSESTACK_STREAM_REPLICAS", 1),
            # ~100 B per reading: 16 GiB holds 24 h at ~2,000 readings/s, twice the reference peak.
            raw_max_bytes=env_int("PULSESTACK_RAW_MAX_BYTES", 16 * GIB),
            pulses_max_bytes=env_int("PULSESTACK_PULSES_MAX_BYTES", 16 * GIB),
            max_age_seconds=env_float("PULSESTACK_STREAM_MAX_AGE", 3 * DAY),
            # Sigfox retries span 7 minutes, devices retransmit for about a minute.
            duplicate_window_seconds=env_float("PULSESTACK_DUPLICATE_WINDOW", 20 * 60),
            max_deliver=env_int("PULSESTACK_MAX_DELIVER", 5),
            ack_wait_seconds=env_float("PULSESTACK_ACK_WAIT", 30.0),
        )


def _stream(
    limits: BusLimits, name: str, subject: str, max_bytes: int, max_age: float, discard: DiscardPolicy
) -> StreamConfig:
    return StreamConfig(
        name=name, subjects=[subject], retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
        num_replicas=limits.replicas, duplicate_window=limits.duplicate_window_seconds,
        max_bytes=max_bytes, max_age=max_age, discard=discard,
    )


def stream_configs(limits: BusLimits) -> list[StreamConfig]:
    return [
        _stream(limits, RAW, "raw.*", limits.raw_max_bytes, limits.max_age_seconds, DiscardPolicy.NEW),
        _stream(limits, PULSES, "pulse.*", limits.pulses_max_bytes, limits.max_age_seconds, DiscardPolicy.NEW),
        # Rejected input is evidence, not data: bounded, oldest dropped first.
        _stream(limits, QUARANTINE, "quarantine.*", GIB, 14 * DAY, DiscardPolicy.OLD),
        _stream(limits, DEAD, "dead.*", GIB, 30 * DAY, DiscardPolicy.OLD),
        # Alert events for subscribers and the webhook notifier; the alerts table is the record.
        _stream(limits, ALERTS, "alerts.*", GIB, 30 * DAY, DiscardPolicy.OLD),
    ]


def consumer_config(durable: str, subject: str, limits: BusLimits, max_deliver: int | None = None) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        deliver_policy=DeliverPolicy.ALL,
        # Explicit: never AckAll, which would acknowledge what another replica still holds.
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=limits.ack_wait_seconds,
        max_deliver=max_deliver or limits.max_deliver,
        max_ack_pending=20_000,
        max_waiting=512,
    )


async def setup(js: JetStreamContext, limits: BusLimits) -> None:
    """Creates or updates streams, consumers and the registry bucket; safe to run again."""
    for config in stream_configs(limits):
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
    consumers = (
        (RAW_CONSUMER, RAW, "raw.*", None), (PULSE_CONSUMER, PULSES, "pulse.*", None),
        # A webhook may be down for a while: about 25 minutes of retries before DEAD.
        (NOTIFIER_CONSUMER, ALERTS, "alerts.*", NOTIFIER_MAX_DELIVER),
    )
    for durable, stream, subject, max_deliver in consumers:
        try:
            await js.consumer_info(stream, durable)
        except NotFoundError:
            await js.add_consumer(stream, consumer_config(durable, subject, limits, max_deliver))
    try:
        await js.key_value(REGISTRY_BUCKET)
    except Exception:
        await js.create_key_value(bucket=REGISTRY_BUCKET, history=1, replicas=limits.replicas)
