"""What both stages do alike: unpack a batch of messages into readings, set aside the unusable ones in
quarantine, write the rest in one transaction (one by one if PostgreSQL rejects the batch for its data),
and report per message what must come back."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar

import asyncpg
import msgspec
from nats.aio.msg import Msg

from pulsestack import faults, metrics
from pulsestack.bus.quarantine import Quarantine
from pulsestack.logs import get_logger
from pulsestack.store.writes import write_isolating
from pulsestack.wire.reading import Reading, invariant_problem

log = get_logger(__name__)
Item = TypeVar("Item")
Result = TypeVar("Result")
Entry = tuple[int, Item]  # (index of the message in the batch, item)


class Stage(ABC, Generic[Item, Result]):
    name: str

    def __init__(self, pool: asyncpg.Pool, quarantine: Quarantine) -> None:
        self._pool = pool
        self._quarantine = quarantine

    @abstractmethod
    def unpack(self, data: bytes) -> Sequence[Item]:
        """The items of one message; raises msgspec errors for what is not this stage's envelope."""

    @abstractmethod
    def reading(self, item: Item) -> Reading: ...

    @abstractmethod
    async def write(self, conn: asyncpg.Connection, items: list[Item]) -> Result:
        """Writes the items in the caller's transaction."""

    @abstractmethod
    async def after_commit(
        self, msgs: list[Msg], written: list[tuple[list[Entry[Item]], Result]], errors: list[str | None]
    ) -> None:
        """What follows a commit; sets errors[i] for messages that must come back."""

    async def process(self, msgs: list[Msg]) -> list[str | None]:
        errors: list[str | None] = [None] * len(msgs)
        entries: list[Entry[Item]] = []
        for i, msg in enumerate(msgs):
            try:
                items = self.unpack(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                if not await self._quarantine.put(self.name, "envelope", str(exc), source=self.name,
                                                  payload=msg.data):
                    errors[i] = "undecodable envelope not quarantined"
                continue
            for item in items:
                reading = self.reading(item)
                faults.check_poison(reading.trace_id)
                problem = invariant_problem(reading)
                if problem is None:
                    entries.append((i, item))
                elif not await self._reject(reading, "invariant", problem):
                    errors[i] = f"invalid reading not quarantined: {problem}"
        if not entries:
            return errors
        metrics.processor_batch_size.labels(self.name).observe(len(entries))
        started = time.monotonic()
        written, rejected = await write_isolating(self._pool, entries, self._write_entries)
        metrics.processor_db_write_seconds.labels(self.name).observe(time.monotonic() - started)
        faults.hit(f"{self.name}.after_commit")
        for (i, item), error in rejected:
            if not await self._reject(self.reading(item), "database", error):
                errors[i] = f"rejected by the database and not quarantined: {error}"
        await self.after_commit(msgs, written, errors)
        return errors

    async def _write_entries(self, conn: asyncpg.Connection, entries: list[Entry[Item]]) -> Result:
        return await self.write(conn, [item for _, item in entries])

    async def _reject(self, reading: Reading, reason: str, detail: str) -> bool:
        metrics.processor_messages.labels(self.name, "quarantined").inc()
        log.warning(
            "reading quarantined", stage=self.name, reason=reason, detail=detail, device=reading.device,
            seq=reading.seq, trace_id=reading.trace_id,
        )
        return await self._quarantine.put(
            self.name, reason, detail, source=f"{reading.protocol}:{reading.device}", reading=reading
        )
