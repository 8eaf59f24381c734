"""Batch consumption from a durable pull consumer, with explicit per-message acks.

A stage's `process` returns, for each message, None (done: ack) or an error
string (redeliver later). On the `max_deliver`-th delivery a failing message is
written to `dead.<stage>` with its error and terminated, so a poison message
never holds up the others. An outage of the database or the bus is not a
failing message: the batch is held and retried until the outage ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from pulsestack import metrics
from pulsestack.bus.publisher import Publisher, PublishError
from pulsestack.bus.topology import DEAD, DELIVERIES, ERROR, MSG_ID, SOURCE_SEQ, SOURCE_STREAM, dead_subject
from pulsestack.logs import get_logger
from pulsestack.service import sleep_or_stop

log = get_logger(__name__)
ProcessBatch = Callable[[list[Msg]], Awaitable[list[str | None]]]


# Errors of the infrastructure (bus unreachable, no PubAck): the whole batch waits and comes back,
# without being retried message by message. Stages add their own (database down).
TRANSIENT: tuple[type[BaseException], ...] = (OSError, TimeoutError, PublishError)


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    stream: str
    durable: str
    stage: str
    batch: int = 500
    max_wait: float = 1.0
    max_deliver: int = 5
    transient: tuple[type[BaseException], ...] = TRANSIENT
    # Batches in flight per process: while one waits for a commit or a PubAck, the next is fetched and
    # written. Explicit acks make this as safe as running more replicas.
    concurrency: int = 2


class Postponed(Exception):
    """The batch met an infrastructure error (its __cause__); it is retried, not failed."""


def redelivery_delay(deliveries: int) -> float:
    return min(30.0, 0.5 * 2.0 ** (deliveries - 1))


class BatchConsumer:
    def __init__(
        self, js: JetStreamContext, publisher: Publisher, settings: ConsumerSettings, process: ProcessBatch
    ) -> None:
        self._js = js
        self._publisher = publisher
        self._settings = settings
        self._process = process
        self.bound = False

    async def run(self, stop: asyncio.Event) -> None:
        s = self._settings
        subs: list[JetStreamContext.PullSubscription] = []
        while len(subs) < s.concurrency and not stop.is_set():
            try:
                subs.append(await self._js.pull_subscribe_bind(durable=s.durable, stream=s.stream))
            except Exception as exc:  # the consumer is created by `pulsestack setup`; wait for it
                log.warning("consumer not available yet", consumer=s.durable, error=str(exc))
                await sleep_or_stop(stop, 2.0)
        if stop.is_set():
            return
        self.bound = True
        await asyncio.gather(*(self._work(sub, stop) for sub in subs))
        for sub in subs:
            await sub.unsubscribe()

    async def _work(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        s = self._settings
        while not stop.is_set():
            try:
                msgs = await sub.fetch(s.batch, timeout=s.max_wait)
            except (TimeoutError, NatsTimeoutError):
                continue
            except Exception as exc:
                log.warning("fetch failed", consumer=s.durable, error=str(exc))
                await sleep_or_stop(stop, 1.0)
                continue
            await self._handle(msgs, stop)

    async def _handle(self, msgs: list[Msg], stop: asyncio.Event) -> None:
        s = self._settings
        redelivered = sum(1 for m in msgs if m.metadata.num_delivered > 1)
        if redelivered:
            metrics.processor_messages.labels(s.stage, "redelivered").inc(redelivered)
        errors = await self._until_infrastructure_answers(msgs, stop)
        if errors is None:
            # Stopping during an outage: hand the batch back now, for a replica or our restart.
            for msg in msgs:
                await msg.nak()
            return
        for msg, error in zip(msgs, errors, strict=True):
            if error is None:
                await msg.ack()
            elif msg.metadata.num_delivered >= s.max_deliver:
                await self._dead_letter(msg, error)
            else:
                await msg.nak(delay=redelivery_delay(msg.metadata.num_delivered))

    async def _until_infrastructure_answers(self, msgs: list[Msg], stop: asyncio.Event) -> list[str | None] | None:
        """Retries the batch while the database or the bus is down, keeping the messages ours.

        Redeliveries are for messages that fail; an outage must not use them up (after `max_deliver`
        JetStream stops delivering). So the batch stays in hand, its ack deadline pushed back with
        in-progress acks, until the outage ends. None if asked to stop meanwhile.
        """
        delay = 0.5
        while True:
            try:
                return await self._process_isolating(msgs)
            except Postponed as exc:
                log.warning("batch waits for the infrastructure", stage=self._settings.stage, messages=len(msgs),
                            error=str(exc.__cause__), retry_in=delay)
            for msg in msgs:
                with contextlib.suppress(Exception):  # the bus may be the thing that is down
                    await msg.in_progress()
            if await sleep_or_stop(stop, delay):
                return None
            delay = min(delay * 2, 8.0)

    async def _process_isolating(self, msgs: list[Msg]) -> list[str | None]:
        """A batch that raises is retried message by message, so one poison message fails alone."""
        try:
            return await self._process(msgs)
        except Exception as exc:
            if isinstance(exc, self._settings.transient):
                raise Postponed() from exc
            if len(msgs) == 1:
                log.warning("message failed", stage=self._settings.stage, error=f"{type(exc).__name__}: {exc}",
                            seq=msgs[0].metadata.sequence.stream, deliveries=msgs[0].metadata.num_delivered)
                return [f"{type(exc).__name__}: {exc}"]
            log.warning("batch failed, isolating", stage=self._settings.stage, messages=len(msgs), error=str(exc))
        errors: list[str | None] = []
        for msg in msgs:
            errors += await self._process_isolating([msg])
        return errors

    async def _dead_letter(self, msg: Msg, error: str) -> None:
        s = self._settings
        headers = dict(msg.headers or {})
        headers.pop(MSG_ID, None)
        headers.update({
            ERROR: error[:1000],
            SOURCE_STREAM: s.stream,
            SOURCE_SEQ: str(msg.metadata.sequence.stream),
            DELIVERIES: str(msg.metadata.num_delivered),
        })
        try:
            await self._publisher.publish(dead_subject(s.stage), msg.data, headers, DEAD)
        except PublishError as exc:
            log.error("dead letter not written; will be redelivered", stage=s.stage, error=str(exc))
            await msg.nak(delay=30)
            return
        await msg.term()
        metrics.dead_letters.labels(s.stage).inc()
        metrics.processor_messages.labels(s.stage, "dead").inc()
        log.error("message moved to DEAD", stage=s.stage, seq=msg.metadata.sequence.stream, error=error)


async def report_backlog(
    js: JetStreamContext, stream: str, durable: str, stop: asyncio.Event, also: tuple[str, ...] = ()
) -> None:
    """Keeps the backlog gauges current, so alerts work without the NATS exporter: the consumer's pending
    counts, the age of its oldest unprocessed message, and how full its stream (and `also`) are."""
    while not stop.is_set():
        try:
            info = await js.consumer_info(stream, durable)
            metrics.stream_pending.labels(stream, durable).set(info.num_pending or 0)
            metrics.stream_ack_pending.labels(stream, durable).set(info.num_ack_pending or 0)
            metrics.stream_oldest_unprocessed.labels(stream, durable).set(await _oldest_unprocessed_age(js, info))
            for name in (stream, *also):
                state = await js.stream_info(name)
                metrics.stream_bytes.labels(name).set(state.state.bytes)
                metrics.stream_max_bytes.labels(name).set(state.config.max_bytes or 0)
        except Exception as exc:
            log.debug("stream or consumer info unavailable", error=str(exc))
        await sleep_or_stop(stop, 5.0)


async def _oldest_unprocessed_age(js: JetStreamContext, info: ConsumerInfo) -> float:
    """Seconds since the oldest message the consumer has not acknowledged was stored; 0 when none is left."""
    if not (info.num_pending or info.num_ack_pending):
        return 0.0
    first = (info.ack_floor.stream_seq or 0 if info.ack_floor else 0) + 1
    subject = (info.config.filter_subject if info.config else None) or ">"
    try:
        msg = await js.get_msg(info.stream_name, first, subject=subject, next=True)
    except NotFoundError:
        return 0.0
    if msg.time is None:
        return 0.0
    return max(0.0, time.time() - msg.time.timestamp())

