"""An ingest-udp process: socket, registry follower, grouper, ops endpoints."""

from __future__ import annotations

import asyncio

from ingest_udp.config import UdpIngestConfig
from ingest_udp.kernel import open_socket, socket_drops
from ingest_udp.protocol import NbiotDatagrams
from pulsestack import metrics, ops
from pulsestack.bus.publisher import Publisher, ReadingGrouper
from pulsestack.bus.quarantine import Quarantine
from pulsestack.bus.streams import RAW
from pulsestack.logs import get_logger
from pulsestack.registry.membership import Membership, keep_following
from pulsestack.service import connect_nats

log = get_logger(__name__)


async def _count_kernel_drops(port: int, stop: asyncio.Event) -> None:
    seen = socket_drops(port)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 5.0)
        except TimeoutError:
            pass
        now = socket_drops(port)
        if now > seen:
            metrics.udp_kernel_drops.inc(now - seen)
        seen = now


async def serve(config: UdpIngestConfig, stop: asyncio.Event) -> None:
    metrics.prime()
    nc = await connect_nats(config.common, "ingest-udp")
    js = nc.jetstream()
    publisher = Publisher(nc)
    await publisher.start()
    membership = Membership(["nbiot"])
    grouper = ReadingGrouper(
        publisher, stream=RAW, subject_of=lambda r: f"raw.{r.protocol}",
        max_readings=config.group_max_readings, max_delay=config.group_max_delay,
    )
    datagrams = NbiotDatagrams(
        membership=membership, grouper=grouper, quarantine=Quarantine(publisher),
        master_key=config.master_key, max_age_seconds=config.max_age_seconds,
    )
    sock = open_socket(config.host, config.port, config.receive_buffer)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: datagrams, sock=sock)

    async def ready() -> str | None:
        if not nc.is_connected:
            return "not connected to NATS"
        if not membership.ready.is_set():
            return "registry not loaded"
        return None

    runner = await ops.serve(config.ops_host, config.ops_port, ready)
    background = [
        asyncio.create_task(keep_following(js, membership, stop)),
        asyncio.create_task(_count_kernel_drops(config.port, stop)),
    ]
    log.info("ingest-udp started", port=config.port, ops_port=config.ops_port)
    await stop.wait()
    # Stop taking datagrams, then let every grouped reading get its PubAck (and its ack) before leaving.
    datagrams.closing = True
    await grouper.drain()  # the acks go out from the PubAck callbacks, before this returns
    transport.close()
    for task in background:
        task.cancel()
    await publisher.stop()
    await nc.drain()
    await runner.cleanup()
    log.info("ingest-udp stopped")
