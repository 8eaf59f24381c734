"""What every ingester stands on: its NATS connection, the grouping publisher to RAW, the quarantine, and
the registry it follows. A protocol's ingest route only adds its socket or HTTP route."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from pulsestack import metrics
from pulsestack.bus.publisher import Publisher, ReadingGrouper
from pulsestack.bus.quarantine import Quarantine
from pulsestack.config import CommonConfig
from pulsestack.registry.membership import Membership, keep_following
from pulsestack.service import close_nats, connect_nats


@dataclass
class IngestBus:
    nc: NATS
    publisher: Publisher
    membership: Membership
    grouper: ReadingGrouper
    quarantine: Quarantine
    _following: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    async def connect(
        cls, common: CommonConfig, protocols: list[str], group_max_readings: int, group_max_delay: float
    ) -> IngestBus:
        metrics.prime()
        nc = await connect_nats(common, common.service)
        publisher = Publisher(nc)
        await publisher.start()
        grouper = ReadingGrouper(publisher, max_readings=group_max_readings, max_delay=group_max_delay)
        return cls(nc, publisher, Membership(protocols), grouper, Quarantine(publisher))

    def follow_registry(self, stop: asyncio.Event) -> None:
        self._following = asyncio.create_task(keep_following(self.nc.jetstream(), self.membership, stop))

    async def ready(self) -> str | None:
        if not self.nc.is_connected:
            return "not connected to NATS"
        if not self.membership.ready.is_set():
            return "registry not loaded"
        return None

    async def close(self) -> None:
        """Every grouped reading gets its PubAck (and so its answer) before the connection drains."""
        await self.grouper.drain()
        if self._following:
            self._following.cancel()
        await self.publisher.stop()
        await close_nats(self.nc)
