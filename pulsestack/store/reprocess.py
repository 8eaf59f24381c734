"""The batch layer: re-derive pulses, gaps, device state and rollups from the stored readings.

The readings' payloads are the immutable record. Reprocessing a device re-decodes each
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

from pulsestack.store.pulses import Identity, Point, bucket_winners, covering, lock_devices, span_of, write_pulses
from pulsestack.store.rollups import Deltas
from pulsestack.store.timeconv import epoch, ts
from pulsestack.wire.codecs import CODECS
from pulsestack.wire.errors import CodecError
from pulsestack.wire.protocol import Codec, StoredRaw
from pulsestack.wire.reading import Reading, new_trace_id

# In period order: a codec's period end is non-decreasing in device time (Codec.period_end), and so is the
# key's leading hour, whose bounds make the walk one index search per hour of the range (migration 012).
_READINGS = """
SELECT seq, device_time, bucket_seconds, counts, meter_index, received_at, payload
FROM readings
WHERE device = $1 AND device_time >= $2 AND device_time < $3
  AND device_hour BETWEEN reading_hour($2) AND reading_hour($3)
ORDER BY device_hour, device_time, seq
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
UPDATE readings SET counts = $4, meter_index = $5, bucket_seconds = $6
WHERE device_hour = reading_hour($2) AND device = $1 AND device_time = $2 AND seq = $3
"""
_COUNT = """
UPDATE device_state SET readings = (SELECT count(*) FROM readings WHERE device = $3)
WHERE protocol = $1 AND device_id = $2
"""
FOREVER = (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), dt.datetime(2200, 1, 1, tzinfo=dt.UTC))


@dataclass(slots=True)
class ReprocessReport:
    devices: int = 0
    readings: int = 0
    redecoded: int = 0
    undecodable: int = 0


def redecode(codec: Codec, device: str, row: asyncpg.Record, trace_id: str) -> Reading:
    """The reading as today's codec reads the stored payload (raises CodecError)."""
    return codec.redecode(StoredRaw(device, row["seq"], epoch(row["device_time"]), row["received_at"].timestamp(),
                                    trace_id, row["payload"]))


async def reprocess_device(
    conn: asyncpg.Connection, protocol: str, device: str, since: dt.datetime, until: dt.datetime,
    report: ReprocessReport, batch: int = 500,
) -> None:
    async with conn.transaction():
        await lock_devices(conn, [(protocol, device)])
        number = await conn.fetchval("SELECT id FROM devices WHERE protocol = $1 AND device_id = $2", protocol, device)
        rows = await conn.fetch(_READINGS, number, since, until) if number is not None else []
        if not rows:
            return
        codec = CODECS.get(protocol)
        if codec is None:  # nothing here can read these payloads, or say where their periods end
            report.undecodable += len(rows)
            return
        trace_id = new_trace_id()  # one trace for the device's replay, in the logs
        items = []
        redecoded = []
        for row in rows:
            try:
                reading = redecode(codec, device, row, trace_id)
            except CodecError:
                report.undecodable += 1
                continue
            if (reading.counts, reading.index, reading.bucket_seconds) != (
                row["counts"], row["meter_index"], row["bucket_seconds"]
            ):
                redecoded.append(reading)
            items.append(reading)
        taking = frozenset((protocol, device, r.device_time, r.seq) for r in items)
        deltas = await _take_back_buckets(conn, protocol, device, rows, taking, codec)
        for reading in redecoded:
            report.redecoded += 1
            await conn.execute(_REDECODED, number, ts(reading.device_time), reading.seq, reading.counts,
                               reading.index, reading.bucket_seconds)
        # What ended at each stored reading, undecodable ones included; the codec gives their period ends.
        ends = [ts(codec.period_end(epoch(row["device_time"]))) for row in rows]
        seqs = [row["seq"] for row in rows]
        for taken in await conn.fetch(_TAKE_BACK_GAPS, protocol, device, ends, seqs):
            deltas.add_spread(protocol, device, epoch(taken["interval_start"]), epoch(taken["interval_end"]),
                              -taken["volume"])
        await conn.execute(_TAKE_BACK_EVENTS, protocol, device, ends, seqs)
        await deltas.apply(conn)
        for start in range(0, len(items), batch):
            later = frozenset((protocol, device, r.device_time, r.seq) for r in items[start + batch :])
            await write_pulses(conn, items[start : start + batch], replay=True, pending=later)
        await conn.execute(_COUNT, protocol, device, number)
        report.devices += 1
        report.readings += len(items)


async def _take_back_buckets(
    conn: asyncpg.Connection, protocol: str, device: str, rows: list[asyncpg.Record], taking: frozenset[Identity],
    codec: Codec,
) -> Deltas:
    """What the buckets held by the readings `taking` (as stored, before re-decoding) leave to the stored
    readings beside them."""
    deltas = Deltas()
    points = [p for row in rows if (p := Point.from_row(row, codec.period_end)) is not None]
    stored = (await covering(conn, {(protocol, device): span_of(points)}))[(protocol, device)]
    before = bucket_winners(stored)
    after = bucket_winners(p for p in stored if (protocol, device, p.device_time, p.seq) not in taking)
    for key, (rank, count) in before.items():
        if (protocol, device, *rank) in taking:
            deltas.add(protocol, device, key[0], after.get(key, (rank, 0))[1] - count)
    return deltas


async def reprocess(
    conn: asyncpg.Connection, *, protocol: str | None = None, devices: list[str] | None = None,
    since: dt.datetime | None = None, until: dt.datetime | None = None,
) -> ReprocessReport:
    """Reprocesses the given devices (default: every device with readings in the range of device time)."""
    since, until = since or FOREVER[0], until or FOREVER[1]
    if devices:
        if protocol is None:
            raise ValueError("devices need their protocol")
        targets = [(protocol, d) for d in devices]
    else:
        rows = await conn.fetch(
            "SELECT protocol, device_id FROM devices d WHERE ($3::text IS NULL OR protocol = $3) AND EXISTS ("
            "SELECT FROM readings r WHERE r.device = d.id AND r.device_time >= $1 AND r.device_time < $2"
            " AND r.device_hour BETWEEN reading_hour($1) AND reading_hour($2))"
            " ORDER BY 1, 2", since, until, protocol,
        )
        targets = [(r["protocol"], r["device_id"]) for r in rows]
    report = ReprocessReport()
    for p, d in targets:
        await reprocess_device(conn, p, d, since, until, report)
    return report
