"""The batch layer: re-derive pulses, gaps, device state and rollups from raw_messages.

Raw messages are the immutable record. Reprocessing a device re-decodes each
stored payload with today's codec (so a decoding bug is fixed by replaying, not
by patching rows), takes back exactly what those readings derived — the
buckets they won, the gaps ending at them, their meter events, and those
contributions to the rollups — and feeds them through `write_pulses`, the live
code path, under the same device lock the raw stage takes. Live ingestion
goes on; a device's live readings wait for its lock for the length of one
device's replay.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from pulsestack.store.pulses import PulseItem, lock_key, write_pulses
from pulsestack.store.rollups import Deltas
from pulsestack.store.timeconv import epoch
from pulsestack.wire.codecs import CODECS
from pulsestack.wire.errors import CodecError
from pulsestack.wire.protocol import StoredRaw
from pulsestack.wire.reading import Reading

_READINGS = """
SELECT id, protocol, device_id, seq, device_time, period_end, bucket_seconds, counts, meter_index, battery_mv,
       flags, received_at, trace_id, payload, meta
FROM raw_messages
WHERE protocol = $1 AND device_id = $2 AND period_end >= $3 AND period_end < $4
ORDER BY period_end, device_time, seq
"""
_TAKE_BACK_PULSES = """
DELETE FROM pulses WHERE protocol = $1 AND device_id = $2 AND raw_id = ANY($3) RETURNING bucket_start, count
"""
_TAKE_BACK_GAPS = """
DELETE FROM gaps g USING unnest($3::timestamptz[], $4::bigint[]) AS r(pe, s)
WHERE g.protocol = $1 AND g.device_id = $2 AND g.to_period_end = r.pe AND g.to_seq = r.s
RETURNING g.interval_start, g.interval_end, g.volume
"""
_TAKE_BACK_EVENTS = """
DELETE FROM meter_events e USING unnest($3::timestamptz[], $4::bigint[]) AS r(at, s)
WHERE e.protocol = $1 AND e.device_id = $2 AND e.at = r.at AND e.seq = r.s
"""
_REDECODED = """
UPDATE raw_messages SET counts = $3, meter_index = $4, battery_mv = $5, flags = $6, bucket_seconds = $7,
                        period_end = $8
WHERE id = $1 AND device_time = $2
"""
_COUNT = """
UPDATE device_state SET readings = (SELECT count(*) FROM raw_messages WHERE protocol = $1 AND device_id = $2)
WHERE protocol = $1 AND device_id = $2
"""
FOREVER = (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), dt.datetime(2200, 1, 1, tzinfo=dt.UTC))


@dataclass(slots=True)
class ReprocessReport:
    devices: int = 0
    readings: int = 0
    redecoded: int = 0
    undecodable: int = 0


def redecode(row: asyncpg.Record) -> Reading:
    """The reading as today's codec reads the stored payload (raises CodecError)."""
    codec = CODECS.get(row["protocol"])
    if codec is None:
        raise CodecError("payload", f"no codec for protocol {row['protocol']}")
    return codec.redecode(StoredRaw(row["device_id"], row["seq"], epoch(row["device_time"]),
                                    row["received_at"].timestamp(), row["trace_id"], row["payload"]))


async def reprocess_device(
    conn: asyncpg.Connection, protocol: str, device: str, since: dt.datetime, until: dt.datetime,
    report: ReprocessReport, batch: int = 500,
) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(protocol, device))
        rows = await conn.fetch(_READINGS, protocol, device, since, until)
        if not rows:
            return
        items = []
        for row in rows:
            try:
                reading = redecode(row)
            except CodecError:
                report.undecodable += 1
                continue
            if (reading.counts, reading.index, reading.period_end) != (
                row["counts"], row["meter_index"], epoch(row["period_end"])
            ):
                report.redecoded += 1
                await conn.execute(
                    _REDECODED, row["id"], row["device_time"], reading.counts, reading.index, reading.battery_mv,
                    reading.flags, reading.bucket_seconds, dt.datetime.fromtimestamp(reading.period_end, dt.UTC),
                )
            items.append(PulseItem(row["id"], reading))
        deltas = Deltas()
        for taken in await conn.fetch(_TAKE_BACK_PULSES, protocol, device, [i.raw_id for i in items]):
            deltas.add(protocol, device, epoch(taken["bucket_start"]), -taken["count"])
        ends = [row["period_end"] for row in rows]
        seqs = [row["seq"] for row in rows]
        for taken in await conn.fetch(_TAKE_BACK_GAPS, protocol, device, ends, seqs):
            deltas.add_spread(protocol, device, epoch(taken["interval_start"]), epoch(taken["interval_end"]),
                              -taken["volume"])
        await conn.execute(_TAKE_BACK_EVENTS, protocol, device, ends, seqs)
        await deltas.apply(conn)
        for start in range(0, len(items), batch):
            await write_pulses(conn, items[start : start + batch], replay=True)
        await conn.execute(_COUNT, protocol, device)
        report.devices += 1
        report.readings += len(items)


async def reprocess(
    conn: asyncpg.Connection, *, protocol: str | None = None, devices: list[str] | None = None,
    since: dt.datetime | None = None, until: dt.datetime | None = None,
) -> ReprocessReport:
    """Reprocesses the given devices (default: every device with raw messages in the range)."""
    since, until = since or FOREVER[0], until or FOREVER[1]
    if devices:
        if protocol is None:
            raise ValueError("devices need their protocol")
        targets = [(protocol, d) for d in devices]
    else:
        rows = await conn.fetch(
            "SELECT DISTINCT protocol, device_id FROM raw_messages WHERE period_end >= $1 AND period_end < $2"
            " AND ($3::text IS NULL OR protocol = $3) ORDER BY 1, 2", since, until, protocol,
        )
        targets = [(r["protocol"], r["device_id"]) for r in rows]
    report = ReprocessReport()
    for p, d in targets:
        await reprocess_device(conn, p, d, since, until, report)
    return report
