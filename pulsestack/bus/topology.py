"""What is on the bus: the streams and their sizing, their subjects, the headers messages carry, the durable
consumers, and the registry's bucket.

RAW is a work queue: a message leaves when the raw stage has acknowledged it, so what it holds is the
backlog, never data already stored. RAW_REPLAY copies RAW (a stream source, server-side) and keeps it
for the replay window: what a database restored to an earlier point needs again. Sizing follows from the
provisioned peak rate (docs/durability.md):

- RAW holds `backlog` seconds of peak traffic; past that, with `discard: new`, it refuses and ingesters stop
  acknowledging: backpressure, never a drop;
- RAW_REPLAY holds `replay window` seconds of peak traffic (its age limit) and drops its oldest past that:
  it is a copy of what PostgreSQL already holds.

`setup` refuses limits that cannot hold the peak for their window, migrates RAW from the limits retention of
earlier versions once its consumer has nothing left to process, and removes PULSES (the pulse stage's stream
before the raw stage derived in its own transaction) once the old pulse processor has drained it.
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
    StreamSource,
)
from nats.js.errors import NotFoundError

from pulsestack.config import ConfigError, env_float, env_int
from pulsestack.wire.reading import ENVELOPE_VERSION

RAW = "RAW"
RAW_REPLAY = "RAW_REPLAY"
# The registry's key-value bucket: which devices exist (pulsestack/registry/membership.py follows it).
REGISTRY_BUCKET = "registry"
QUARANTINE = "QUARANTINE"
DEAD = "DEAD"
ALERTS = "ALERTS"
RAW_CONSUMER = "raw-processor"
NOTIFIER_CONSUMER = "notifier"
NOTIFIER_MAX_DELIVER = 50
GIB = 1024**3
HOUR = 3600.0
DAY = 86_400.0
# Stream bytes per reading, message overhead included, at low rates where a RAW message carries one reading
# (at high rates groups share it): measured by tests/test_streams_over_time.py, with headroom.
RAW_BYTES_PER_READING = 320
# Retired with the pulse stage; `setup` removes the stream once its consumer has drained it.
RETIRED_STREAM, RETIRED_CONSUMER = "PULSES", "pulse-processor"

# Subjects: each stream's wildcard, and the one each message goes to.
RAW_SUBJECTS, QUARANTINE_SUBJECTS, DEAD_SUBJECTS, ALERT_SUBJECTS = "raw.*", "quarantine.*", "dead.*", "alerts.*"


def raw_subject(protocol: str) -> str:
    return f"raw.{protocol}"


def quarantine_subject(stage: str) -> str:
    return f"quarantine.{stage}"


def dead_subject(stage: str) -> str:
    return f"dead.{stage}"


def alert_subject(kind: str) -> str:
    return f"alerts.{kind}"


# Headers. MSG_ID is JetStream's own: a second message with an id seen within the duplicate window is dropped.
MSG_ID = "Nats-Msg-Id"
TRACE_ID = "Pulsestack-Trace-Id"
ENVELOPE = "Pulsestack-Envelope"  # what the body is: RAW_ENVELOPE, msgspec arrays of readings
RAW_ENVELOPE = f"raw/{ENVELOPE_VERSION}"
REASON = "Pulsestack-Reason"  # a quarantine record's
# A dead message's: why its stage gave up, and where it came from.
ERROR, SOURCE_STREAM, SOURCE_SEQ = "Pulsestack-Error", "Pulsestack-Source-Stream", "Pulsestack-Source-Seq"
DELIVERIES = "Pulsestack-Deliveries"


class SetupError(Exception):
    """The bus cannot be set up as asked; the message says what to change or do."""


@dataclass(frozen=True, slots=True)
class BusLimits:
    replicas: int
    peak_rate: float  # readings/s the deployment is provisioned for
    backlog_seconds: float  # how far the processors may fall behind at peak before ingest refuses
    replay_seconds: float  # how long RAW_REPLAY keeps readings for a database restore
    raw_max_bytes: int
    replay_max_bytes: int
    duplicate_window_seconds: float
    max_deliver: int
    ack_wait_seconds: float

    @classmethod
    def from_env(cls) -> BusLimits:
        peak = env_float("PULSESTACK_PEAK_RATE", 1000.0)  # the reference peak: 3.6 M meters reporting hourly
        backlog = env_float("PULSESTACK_BACKLOG_WINDOW", 6 * HOUR)
        # The WAL archive's lag (docs/durability.md) is minutes; half a day also covers a restore decided late.
        replay = env_float("PULSESTACK_REPLAY_WINDOW", 12 * HOUR)
        limits = cls(
            # 1 on a single node (see docs/durability.md), 3 on the swarm.
            replicas=env_int("PULSESTACK_STREAM_REPLICAS", 1),
            peak_rate=peak,
            backlog_seconds=backlog,
            replay_seconds=replay,
            raw_max_bytes=env_int("PULSESTACK_RAW_MAX_BYTES", needed(peak, backlog, RAW_BYTES_PER_READING)),
            replay_max_bytes=env_int("PULSESTACK_REPLAY_MAX_BYTES", needed(peak, replay, RAW_BYTES_PER_READING)),
            # Sigfox retries span 7 minutes, devices retransmit for about a minute.
            duplicate_window_seconds=env_float("PULSESTACK_DUPLICATE_WINDOW", 20 * 60),
            max_deliver=env_int("PULSESTACK_MAX_DELIVER", 5),
            ack_wait_seconds=env_float("PULSESTACK_ACK_WAIT", 30.0),
        )
        limits.check()
        return limits

    def check(self) -> None:
        """Refuses limits under which a stream would fill at the provisioned peak within its window."""
        problems = []
        for variable, have, seconds, per_reading, window in (
            ("PULSESTACK_RAW_MAX_BYTES", self.raw_max_bytes, self.backlog_seconds, RAW_BYTES_PER_READING,
             "PULSESTACK_BACKLOG_WINDOW"),
            ("PULSESTACK_REPLAY_MAX_BYTES", self.replay_max_bytes, self.replay_seconds, RAW_BYTES_PER_READING,
             "PULSESTACK_REPLAY_WINDOW"),
        ):
            want = needed(self.peak_rate, seconds, per_reading)
            if have < want:
                problems.append(f"{variable}={have} holds less than {window}={seconds:.0f} s at "
                                f"PULSESTACK_PEAK_RATE={self.peak_rate:g}/s ({want} bytes needed)")
        if problems:
            raise ConfigError("; ".join(problems))


def needed(rate: float, seconds: float, bytes_per_reading: int) -> int:
    return int(rate * seconds * bytes_per_reading)


def _stream(limits: BusLimits, name: str, subject: str, max_bytes: int, max_age: float,
            discard: DiscardPolicy) -> StreamConfig:
    return StreamConfig(
        name=name, subjects=[subject], retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
        num_replicas=limits.replicas, duplicate_window=limits.duplicate_window_seconds,
        max_bytes=max_bytes, max_age=max_age, discard=discard,
    )


def _work_queue(limits: BusLimits, name: str, subject: str, max_bytes: int) -> StreamConfig:
    config = _stream(limits, name, subject, max_bytes, 0, DiscardPolicy.NEW)
    config.retention = RetentionPolicy.WORK_QUEUE
    return config


def stream_configs(limits: BusLimits) -> list[StreamConfig]:
    return [
        _work_queue(limits, RAW, RAW_SUBJECTS, limits.raw_max_bytes),
        StreamConfig(
            name=RAW_REPLAY, sources=[StreamSource(name=RAW)], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, num_replicas=limits.replicas, max_bytes=limits.replay_max_bytes,
            max_age=limits.replay_seconds, discard=DiscardPolicy.OLD,
        ),
        # Rejected input is evidence, not data: bounded, oldest dropped first.
        _stream(limits, QUARANTINE, QUARANTINE_SUBJECTS, GIB, 14 * DAY, DiscardPolicy.OLD),
        _stream(limits, DEAD, DEAD_SUBJECTS, GIB, 30 * DAY, DiscardPolicy.OLD),
        # Alert events for subscribers and the webhook notifier; the alerts table is the record.
        _stream(limits, ALERTS, ALERT_SUBJECTS, GIB, 30 * DAY, DiscardPolicy.OLD),
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


CONSUMERS = (
    (RAW_CONSUMER, RAW, RAW_SUBJECTS, None),
    # A webhook may be down for a while: about 25 minutes of retries before DEAD.
    (NOTIFIER_CONSUMER, ALERTS, ALERT_SUBJECTS, NOTIFIER_MAX_DELIVER),
)


async def setup(js: JetStreamContext, limits: BusLimits) -> None:
    """Creates or updates streams, consumers and the registry bucket; safe to run again."""
    await retire_pulses(js)
    configs = stream_configs(limits)
    for config in configs:
        assert config.name is not None
        try:
            existing = (await js.stream_info(config.name)).config
        except NotFoundError:
            await js.add_stream(config)
            continue
        if existing.retention != config.retention:
            await _recreate(js, config)
        else:
            await js.update_stream(config)
    for durable, stream, subject, max_deliver in CONSUMERS:
        # Create or update: a changed ack wait or max_deliver reaches the existing consumer.
        await js.add_consumer(stream, consumer_config(durable, subject, limits, max_deliver))
    try:
        await js.key_value(REGISTRY_BUCKET)
    except Exception:
        await js.create_key_value(bucket=REGISTRY_BUCKET, history=1, replicas=limits.replicas)


async def raw_backlog(js: JetStreamContext) -> int:
    """Messages in RAW the raw stage has not processed yet: waiting, or delivered and not acknowledged."""
    info = await js.consumer_info(RAW, RAW_CONSUMER)
    return (info.num_pending or 0) + (info.num_ack_pending or 0)


async def drained(js: JetStreamContext) -> bool:
    """The raw stage has processed everything RAW holds."""
    return await raw_backlog(js) == 0


async def retire_pulses(js: JetStreamContext) -> None:
    """Removes the retired stream once it is empty (a work queue holds only what is not processed yet)."""
    try:
        left = (await js.stream_info(RETIRED_STREAM)).state.messages
    except NotFoundError:
        return
    if left:
        raise SetupError(
            f"{RETIRED_STREAM} still holds {left} message(s) for {RETIRED_CONSUMER}: keep the old "
            f"{RETIRED_CONSUMER} service running until it has processed them, then run setup again"
        )
    await js.delete_stream(RETIRED_STREAM)


async def _recreate(js: JetStreamContext, config: StreamConfig) -> None:
    """A stream's retention cannot be updated: once its consumer has processed everything, it is deleted and
    created again (what it held is stored in PostgreSQL already). Refused while anything is left."""
    assert config.name is not None
    for durable, stream, _, _ in CONSUMERS:
        if stream != config.name:
            continue
        try:
            info = await js.consumer_info(stream, durable)
        except NotFoundError:
            continue
        left = info.num_pending + info.num_ack_pending
        if left:
            raise SetupError(
                f"{stream} must move to {config.retention} retention, but {durable} has {left} message(s) "
                f"left to process: stop ingest (scale ingest-udp and ingest-http to 0), let the processors "
                f"drain, then run setup again"
            )
    await js.delete_stream(config.name)
    await js.add_stream(config)
