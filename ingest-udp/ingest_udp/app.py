"""An ingest-udp process: socket, registry follower, grouper, ops endpoints."""

from __future__ import annotations

import asyncio

from ingest_udp.config import UdpIngestConfig
from ingest_udp.kernel import open_socket, socket_drops
from ingest_udp.protocol import PROTOCOL, NbiotDatagrams
from pulsestack import metrics
from pulsestack.ingest import IngestBus
from pulsestack.service import Lifecycle, sleep_or_stop


async def _count_kernel_drops(port: int, stop: asyncio.Event) -> None:
    seen = socket_drops(port)
    while not stop.is_set():
        await sleep_or_stop(stop, 5.0)
        now = socket_drops(port)
        if now > seen:
            metrics.udp_kernel_drops.inc(now - seen)
        seen = now


async def serve(config: UdpIngestConfig, stop: asyncio.Event) -> None:
    async with Lifecycle(config.common.service) as life:
        bus = await IngestBus.connect(config.common, [PROTOCOL], config.group_max_readings, config.group_max_delay)
        datagrams = NbiotDatagrams(
            membership=bus.membership, grouper=bus.grouper, quarantine=bus.quarantine,
            master_key=config.master_key, max_age_seconds=config.max_age_seconds,
            clock=config.common.clock,
        )
        sock = open_socket(config.host, config.port, config.receive_buffer)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: datagrams, sock=sock)

        async def drain() -> None:
            # Stop taking datagrams, then let every grouped reading get its PubAck (and its ack) before the
            # socket closes: the acks go out from the PubAck callbacks, before the bus closes.
            datagrams.closing = True
            await bus.close()
            transport.close()

        life.on_close(drain)
        await life.ops(config.ops_host, config.ops_port, bus.ready)
        bus.follow_registry(stop)
        life.beside(_count_kernel_drops(config.port, stop))
        life.started(port=config.port, ops_port=config.ops_port)
        await stop.wait()
