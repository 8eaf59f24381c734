"""What a stored reading derives: buckets, gap volumes, meter resets and device state, in the raw stage's
transaction.

The cumulative index is the truth. For two consecutive readings A and B of a
device (ordered by period), `(B.index - A.index) mod 2^32` pulses flowed between
A's period end and B's; whatever B's buckets do not cover is gap volume,
attributed to the uncovered interval, or to the boundary as an adjustment when
there is none or the volume is negative. So totals over any period covered by
readings equal the index difference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import asyncpg

from pulsestack.alerts.changes import AlertChanges
from pulsestack.alerts.rules import judge
from pulsestack.store.rollups import Deltas
from pulsestack.store.timeconv import epoch, ts, ts_float
from pulsestack.wire.codecs import codec_of
from pulsestack.wire.reading import ALLOWED_BUCKET_SECONDS, MAX_BUCKETS, Reading

WRAP = 2**32
HALF = 2**31
# The stored readings of each device that may cover a bucket in [lo, hi): a reading covers
# [period_end - n * bucket_seconds, period_end), its period end is at most 15 minutes before its device time
# (Codec.period_end), so this is a superset, walked on the readings' primary key from lo on; the exact cover is
# decided in Python by the codec's period end.
# The longest a reading reaches past the start of a bucket it covers: MAX_BUCKETS of the widest width, plus the
# quarter hour a callback's time may lie after its period end (migration 009 states the same bound).
MAX_SPAN = MAX_BUCKETS * max(ALLOWED_BUCKET_SECONDS) + 900
_COVERING = """
SELECT k.i, r.device_time, r.seq, r.meter_index, r.bucket_seconds, r.counts
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) WITH ORDINALITY AS k(p, d, lo, hi, i)
JOIN devices dev ON dev.protocol = k.p AND dev.device_id = k.d
LEFT JOIN device_state st ON st.protocol = k.p AND st.device_id = k.d
CROSS JOIN LATERAL (
    -- The key's upper bound: no reading starting before hi ends later than MAX_SPAN after it, and no stored
    -- reading of the device is later than its state's last one (derived in the transaction that stored it), so
    -- a reading newer than all before it, the common case, walks no hour at all.
    SELECT least(k.hi + make_interval(secs => $5), st.last_device_time) AS until
) b
JOIN LATERAL (
    SELECT r.device_time, r.seq, r.meter_index, r.bucket_seconds, r.counts FROM readings r
    WHERE r.device = dev.id AND r.device_time > k.lo AND r.device_time <= b.until
      -- The same range in the key's leading hours (migration 012): one index walk per hour of it.
      AND r.device_hour BETWEEN reading_hour(k.lo) AND reading_hour(b.until)
      AND r.device_time - make_interval(secs => r.bucket_seconds * cardinality(r.counts))
          < k.hi + interval '15 minutes'
) r ON true
"""
_STATE = """
SELECT k.p AS protocol, k.d AS device_id, s.last_period_end, s.last_device_time, s.last_seq, s.last_index,
       s.readings, s.last_seen, s.interval_seconds, s.first_bucket, s.last_zero_flow, s.finest_bucket,
       (SELECT array_agg(a.kind) FROM alerts a
        WHERE a.protocol = k.p AND a.device_id = k.d AND a.resolved_at IS NULL) AS open_alerts
FROM unnest($1::text[], $2::text[]) AS k(p, d)
LEFT JOIN LATERAL (
    SELECT * FROM device_state s WHERE s.protocol = k.p AND s.device_id = k.d
) s ON true
"""
# Written whole: the device locks make what this transaction read the current state. A device with a row is
# updated (one WAL record, HOT); only a new one is inserted: the upsert's path through an existing row locks it
# first, a second WAL record per reading.
_STATE_COLUMNS = """
    (p, dev, period_end, device_time, seq, meter_index, battery_mv, flags, seen, readings, interval_seconds,
     first_bucket, zero_flow, finest)
"""
_STATE_ROWS = """
unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::bigint[], $6::bigint[], $7::int[],
       $8::int[], $9::timestamptz[], $10::bigint[], $11::int[], $12::timestamptz[], $13::timestamptz[], $14::int[])
"""
_UPDATE_STATE = f"""
UPDATE device_state d
SET last_period_end = u.period_end, last_device_time = u.device_time, last_seq = u.seq,
    last_index = u.meter_index, last_battery_mv = u.battery_mv, last_flags = u.flags, last_seen = u.seen,
    readings = u.readings, interval_seconds = u.interval_seconds, first_bucket = u.first_bucket,
    last_zero_flow = u.zero_flow, finest_bucket = u.finest
FROM {_STATE_ROWS} AS u {_STATE_COLUMNS}
WHERE d.protocol = u.p AND d.device_id = u.dev
"""
_INSERT_STATE = f"""
INSERT INTO device_state AS d (protocol, device_id, last_period_end, last_device_time, last_seq, last_index,
                               last_battery_mv, last_flags, last_seen, readings,
                               interval_seconds, first_bucket, last_zero_flow, finest_bucket)
SELECT * FROM {_STATE_ROWS}
ON CONFLICT (protocol, device_id) DO UPDATE
SET last_period_end = EXCLUDED.last_period_end, last_device_time = EXCLUDED.last_device_time,
    last_seq = EXCLUDED.last_seq, last_index = EXCLUDED.last_index,
    last_battery_mv = EXCLUDED.last_battery_mv, last_flags = EXCLUDED.last_flags,
    last_seen = EXCLUDED.last_seen, readings = EXCLUDED.readings, interval_seconds = EXCLUDED.interval_seconds,
    first_bucket = EXCLUDED.first_bucket, last_zero_flow = EXCLUDED.last_zero_flow,
    finest_bucket = EXCLUDED.finest_bucket
"""
_OLD_GAPS = """
SELECT g.protocol, g.device_id, g.from_period_end, g.from_seq, g.interval_start, g.interval_end, g.volume
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[]) AS k(p, d, pe, s)
CROSS JOIN LATERAL (
    SELECT * FROM gaps g
    WHERE g.protocol = k.p AND g.device_id = k.d AND g.from_period_end = k.pe AND g.from_seq = k.s
) g
"""
# The stored readings just before and just after each late reading, all late readings at once. History is in
# period order, (period_end, device_time, seq); a codec's period end is a non-decreasing function of device time
# (Codec.period_end), and so is the key's leading hour, so within a device (device_hour, device_time, seq) is the
# same order and the walk follows the readings' primary key. The key walks once per hour it searches (migration
# 012), so each side first looks within NEAR_HOURS, where a late reading's neighbours nearly always are, and
# only if that finds none, further: the second branch of a UNION ALL under LIMIT 1 runs only when the first
# returned nothing. The device-time bounds beside the hours are implied by them (an hour's readings lie within
# it) and only prune the monthly partitions.
NEAR_HOURS = 48
_NEIGHBOURS = f"""
SELECT k.i,
       b.device_time AS b_device_time, b.seq AS b_seq, b.meter_index AS b_meter_index,
       b.counts AS b_counts, b.bucket_seconds AS b_bucket_seconds,
       a.device_time AS a_device_time, a.seq AS a_seq, a.meter_index AS a_meter_index,
       a.counts AS a_counts, a.bucket_seconds AS a_bucket_seconds
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[]) WITH ORDINALITY AS k(p, d, dt, s, i)
JOIN devices dev ON dev.protocol = k.p AND dev.device_id = k.d
LEFT JOIN LATERAL ((
    SELECT * FROM readings r
    WHERE r.device = dev.id AND (r.device_time, r.seq) < (k.dt, k.s)
      AND r.device_hour BETWEEN reading_hour(k.dt) - {NEAR_HOURS} AND reading_hour(k.dt)
      AND r.device_time > k.dt - make_interval(hours => {NEAR_HOURS + 1})
    ORDER BY r.device_hour DESC, r.device_time DESC, r.seq DESC LIMIT 1
) UNION ALL (
    SELECT * FROM readings r
    WHERE r.device = dev.id AND r.device_hour < reading_hour(k.dt) - {NEAR_HOURS}
      AND r.device_time < k.dt - make_interval(hours => {NEAR_HOURS})
    ORDER BY r.device_hour DESC, r.device_time DESC, r.seq DESC LIMIT 1
) LIMIT 1) b ON true
LEFT JOIN LATERAL ((
    SELECT * FROM readings r
    WHERE r.device = dev.id AND (r.device_time, r.seq) > (k.dt, k.s)
      AND r.device_hour BETWEEN reading_hour(k.dt) AND reading_hour(k.dt) + {NEAR_HOURS}
      AND r.device_time < k.dt + make_interval(hours => {NEAR_HOURS + 1})
    ORDER BY r.device_hour, r.device_time, r.seq LIMIT 1
) UNION ALL (
    SELECT * FROM readings r
    WHERE r.device = dev.id AND r.device_hour > reading_hour(k.dt) + {NEAR_HOURS}
      AND r.device_time > k.dt + make_interval(hours => {NEAR_HOURS})
    ORDER BY r.device_hour, r.device_time, r.seq LIMIT 1
) LIMIT 1) a ON true
"""
_UPSERT_GAPS = """
INSERT INTO gaps (protocol, device_id, from_period_end, from_seq, to_period_end, to_seq,
                  interval_start, interval_end, volume, kind)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], $5::timestamptz[],
                     $6::bigint[], $7::timestamptz[], $8::timestamptz[], $9::bigint[], $10::text[])
ON CONFLICT (protocol, device_id, from_period_end, from_seq) DO UPDATE
SET to_period_end = EXCLUDED.to_period_end, to_seq = EXCLUDED.to_seq, interval_start = EXCLUDED.interval_start,
    interval_end = EXCLUDED.interval_end, volume = EXCLUDED.volume, kind = EXCLUDED.kind, updated_at = now()
"""
_DELETE_GAPS = """
DELETE FROM gaps g USING unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[]) AS k(p, d, pe, s)
WHERE g.protocol = k.p AND g.device_id = k.d AND g.from_period_end = k.pe AND g.from_seq = k.s
"""
# A reset is keyed by the later of its two readings; a late reading between them moves it (a new earlier
# side, or a reset that now lies before the late reading), so the row is rewritten or deleted, not kept.
_UPSERT_RESETS = """
INSERT INTO meter_events AS e (protocol, device_id, at, seq, kind, from_index, to_index)
SELECT p, d, at, s, 'reset', fi, ti
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], $5::bigint[], $6::bigint[])
     AS t(p, d, at, s, fi, ti)
ON CONFLICT (protocol, device_id, at, seq, kind) DO UPDATE
SET from_index = EXCLUDED.from_index, to_index = EXCLUDED.to_index, recorded_at = now()
WHERE (e.from_index, e.to_index) IS DISTINCT FROM (EXCLUDED.from_index, EXCLUDED.to_index)
RETURNING xmax = 0 AS inserted
"""
_DELETE_RESETS = """
DELETE FROM meter_events e USING unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[]) AS k(p, d, at, s)
WHERE e.protocol = k.p AND e.device_id = k.d AND e.at = k.at AND e.seq = k.s AND e.kind = 'reset'
"""


@dataclass(frozen=True, slots=True)
class Point:
    """A reading's place in its device's history: what gap computation needs."""

    period_end: int
    device_time: int
    seq: int
    index: int
    bucket_seconds: int
    counts: tuple[int, ...]

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.period_end, self.device_time, self.seq)

    @classmethod
    def of(cls, r: Reading) -> Point:
        return cls(r.period_end, r.device_time, r.seq, r.index, r.bucket_seconds, tuple(r.counts))

    @classmethod
    def from_row(cls, row: asyncpg.Record, period_end: Callable[[int], int], prefix: str = "") -> Point | None:
        """A stored reading's point; `period_end` is its codec's (the readings table does not keep it)."""
        if row[prefix + "device_time"] is None:
            return None
        device_time = epoch(row[prefix + "device_time"])
        return cls(
            period_end(device_time), device_time, row[prefix + "seq"],
            row[prefix + "meter_index"], row[prefix + "bucket_seconds"], tuple(row[prefix + "counts"]),
        )


Rank = tuple[int, int]  # (device_time, seq): a reading's identity within its device, and its precedence
BucketKey = tuple[int, int]  # (bucket_start, bucket_seconds)
Identity = tuple[str, str, int, int]  # (protocol, device, device_time, seq)


def bucket_winners(points: Iterable[Point]) -> dict[BucketKey, tuple[Rank, int]]:
    """Each bucket's winner among the readings covering it, with its count: the latest (device_time, seq), so
    the answer does not depend on the order readings arrived in."""
    won: dict[BucketKey, tuple[Rank, int]] = {}
    for p in points:
        first = p.period_end - len(p.counts) * p.bucket_seconds
        rank = (p.device_time, p.seq)
        for i, count in enumerate(p.counts):
            key = (first + i * p.bucket_seconds, p.bucket_seconds)
            held = won.get(key)
            if held is None or held[0] < rank:
                won[key] = (rank, count)
    return won


async def covering(
    conn: asyncpg.Connection, spans: dict[tuple[str, str], tuple[int, int]]
) -> dict[tuple[str, str], list[Point]]:
    """Per device, the stored readings covering some bucket of its span [lo, hi), in one statement."""
    keys = list(spans)
    found: dict[tuple[str, str], list[Point]] = {k: [] for k in keys}
    rows = await conn.fetch(
        _COVERING, [k[0] for k in keys], [k[1] for k in keys], [ts(spans[k][0]) for k in keys],
        [ts(spans[k][1]) for k in keys], MAX_SPAN,
    )
    for row in rows:
        key = keys[row["i"] - 1]
        lo, hi = spans[key]
        point = Point.from_row(row, codec_of(key[0]).period_end)
        if point is not None and point.period_end > lo and span_of([point])[0] < hi:
            found[key].append(point)
    return found


def span_of(points: Iterable[Point]) -> tuple[int, int]:
    """[first bucket start, last period end) of some readings of one device."""
    listed = list(points)
    return (min(p.period_end - len(p.counts) * p.bucket_seconds for p in listed), max(p.period_end for p in listed))


@dataclass(frozen=True, slots=True)
class Gap:
    volume: int
    start: int
    end: int
    kind: str


RESET = None


def gap_between(a: Point, b: Point) -> Gap | None:
    """The gap from A to the next reading B, or None (RESET) when the index went backwards."""
    diff = (b.index - a.index) % WRAP
    if diff > HALF:
        return RESET
    first = b.period_end - len(b.counts) * b.bucket_seconds
    covered = sum(c for i, c in enumerate(b.counts) if first + i * b.bucket_seconds >= a.period_end)
    volume = diff - covered
    if first > a.period_end and volume >= 0:
        return Gap(volume, a.period_end, first, "gap")
    return Gap(volume, a.period_end, a.period_end, "adjustment")


@dataclass(slots=True)
class PulseOutcome:
    stored: list[Reading] = field(default_factory=list)
    duplicates: int = 0
    conflicts: int = 0
    gaps: int = 0
    resets: int = 0
    alerts: list[int] = field(default_factory=list)  # ids of alerts opened or resolved, to publish


@dataclass(slots=True)
class _DeviceState:
    point: Point | None
    readings: int
    last_seen: float | None = None
    interval: int | None = None
    first_bucket: int | None = None
    last_zero_flow: int | None = None
    finest: int | None = None
    open_alerts: frozenset[str] = frozenset()
    last: Reading | None = None
    added: int = 0
    seen: float = 0.0

    def observe(self, r: Reading) -> None:
        """What every new reading, in order or late, tells about flow and the device's bucket widths."""
        first = r.first_bucket_start
        self.first_bucket = first if self.first_bucket is None else min(self.first_bucket, first)
        self.finest = r.bucket_seconds if self.finest is None else min(self.finest, r.bucket_seconds)
        for i, count in enumerate(r.counts):
            if count == 0:
                end = first + (i + 1) * r.bucket_seconds
                self.last_zero_flow = end if self.last_zero_flow is None else max(self.last_zero_flow, end)
        self.added += 1
        self.readings += 1
        self.seen = max(self.seen, r.received_at)

    def follow(self, r: Reading) -> None:
        """An in-order reading becomes the device's last; receive times teach its reporting interval."""
        if self.last_seen is not None and r.received_at > self.last_seen:
            gap = r.received_at - self.last_seen
            self.interval = round(gap if self.interval is None else 0.7 * self.interval + 0.3 * gap)
            self.interval = max(1, min(self.interval, 30 * 86_400))
        self.last_seen = max(self.last_seen or 0.0, r.received_at)
        self.point = Point.of(r)
        self.last = r

    def take(self, r: Reading) -> bool:
        """Observes a new reading, and follows it when it comes in order (returned)."""
        self.observe(r)
        if self.point is not None and Point.of(r).key <= self.point.key:
            return False
        self.follow(r)
        return True


def lock_key(protocol: str, device: str) -> int:
    """The advisory lock every writer of a device's readings or derived data holds."""
    digest = hashlib.blake2b(f"{protocol}:{device}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock_devices(conn: asyncpg.Connection, devices: Iterable[tuple[str, str]]) -> None:
    """Takes the (protocol, device) locks until the transaction ends, in one order for every writer, so two
    writers of overlapping devices queue rather than deadlock. Serialises the replicas and `replay` that hold
    readings of the same device: what one stores and derives, the next sees committed."""
    await conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k",
                       sorted({lock_key(p, d) for p, d in devices}))


class _GapWriter:
    """Collects what lies between consecutive readings: gap rows keyed by the earlier reading, resets keyed by
    the later one, so the last computation for a key wins."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, int, int], tuple[Point, Gap] | None] = {}
        self.resets: dict[tuple[str, str, int, int], tuple[Point, Point] | None] = {}

    def put(self, protocol: str, device: str, a: Point, b: Point, b_stored_before: bool = False) -> None:
        """`b_stored_before`: B was already followed by what it now follows, so a reset keyed by B may exist."""
        gap = gap_between(a, b)
        key = (protocol, device, a.period_end, a.seq)
        reset_key = (protocol, device, b.period_end, b.seq)
        if gap is RESET:
            self.rows[key] = None
            self.resets[reset_key] = (a, b)
        else:
            self.rows[key] = (b, gap) if gap.volume else None
            if b_stored_before or reset_key in self.resets:
                self.resets[reset_key] = None

    async def flush(self, conn: asyncpg.Connection, deltas: Deltas) -> tuple[int, int]:
        if self.rows:
            keys = list(self.rows)
            # What the rows say now is taken out of the rollups, what they will say is put in.
            for old in await conn.fetch(
                _OLD_GAPS, [k[0] for k in keys], [k[1] for k in keys], [ts(k[2]) for k in keys], [k[3] for k in keys]
            ):
                deltas.add_spread(old["protocol"], old["device_id"], epoch(old["interval_start"]),
                                  epoch(old["interval_end"]), -old["volume"])
        upserts = [(k, v) for k, v in self.rows.items() if v is not None]
        deletes = [k for k, v in self.rows.items() if v is None]
        for (protocol, device, _, _), (_, gap) in upserts:
            deltas.add_spread(protocol, device, gap.start, gap.end, gap.volume)
        if deletes:
            await conn.execute(
                _DELETE_GAPS, [k[0] for k in deletes], [k[1] for k in deletes],
                [ts(k[2]) for k in deletes], [k[3] for k in deletes],
            )
        if upserts:
            await conn.execute(
                _UPSERT_GAPS,
                [k[0] for k, _ in upserts], [k[1] for k, _ in upserts], [ts(k[2]) for k, _ in upserts],
                [k[3] for k, _ in upserts], [ts(b.period_end) for _, (b, _) in upserts],
                [b.seq for _, (b, _) in upserts], [ts(g.start) for _, (_, g) in upserts],
                [ts(g.end) for _, (_, g) in upserts], [g.volume for _, (_, g) in upserts],
                [g.kind for _, (_, g) in upserts],
            )
        return len(upserts), await self._flush_resets(conn)

    async def _flush_resets(self, conn: asyncpg.Connection) -> int:
        """Writes the resets; returns how many are new."""
        gone = [k for k, v in self.resets.items() if v is None]
        if gone:
            await conn.execute(
                _DELETE_RESETS, [k[0] for k in gone], [k[1] for k in gone], [ts(k[2]) for k in gone],
                [k[3] for k in gone],
            )
        resets = [(k, v) for k, v in self.resets.items() if v is not None]
        if not resets:
            return 0
        written = await conn.fetch(
            _UPSERT_RESETS, [k[0] for k, _ in resets], [k[1] for k, _ in resets], [ts(k[2]) for k, _ in resets],
            [k[3] for k, _ in resets], [a.index for _, (a, _) in resets], [b.index for _, (_, b) in resets],
        )
        return sum(1 for row in written if row["inserted"])


async def write_pulses(
    conn: asyncpg.Connection, readings: list[Reading], replay: bool = False, pending: frozenset[Identity] = frozenset()
) -> PulseOutcome:
    """Derives from a batch of readings just stored, in the caller's transaction: buckets, gaps, device
    state, rollups and alerts. Each reading's derived data is applied once: the caller passes only readings
    this transaction stored (or took back, reprocessing). `pending`: stored readings not applied yet (being
    reprocessed), which do not hold buckets meanwhile. `replay` (reprocessing): old readings are not news, so
    they do not end a device's silence. The caller holds the readings' device locks (lock_devices), so the
    history this reads is stable."""
    outcome = PulseOutcome()
    by_identity: dict[str, Reading] = {}
    for r in readings:
        if r.msg_id in by_identity:
            outcome.duplicates += 1
        else:
            by_identity[r.msg_id] = r
    unique = list(by_identity.values())
    by_device: dict[tuple[str, str], list[Point]] = {}
    for r in unique:
        by_device.setdefault((r.protocol, r.device), []).append(Point.of(r))
    stored = await covering(conn, {k: span_of(points) for k, points in by_device.items()})
    deltas = Deltas()
    for (protocol, device), points in by_device.items():
        batch = bucket_winners(points)
        outcome.conflicts += sum(len(p.counts) for p in points) - len(batch)  # contested within the batch
        # What the device's buckets held before this batch: the stored readings, less this batch and what
        # the caller has not applied yet.
        skip = {(p.device_time, p.seq) for p in points}
        skip |= {(t, s) for pr, d, t, s in pending if (pr, d) == (protocol, device)}
        before = bucket_winners(p for p in stored[(protocol, device)] if (p.device_time, p.seq) not in skip)
        for key, (rank, count) in batch.items():
            held = before.get(key)
            if held is None:
                deltas.add(protocol, device, key[0], count)
                continue
            outcome.conflicts += 1
            if rank > held[0]:
                deltas.add(protocol, device, key[0], count - held[1])
    outcome.stored = unique
    alerts = AlertChanges()
    outcome.gaps, outcome.resets = await _update_history(conn, unique, deltas, alerts, replay)
    for total in await deltas.apply(conn):
        alerts.day_total(total.protocol, total.device, total.day, total.pulses)
    outcome.alerts = await alerts.apply(conn)
    return outcome


def _state_from_row(row: asyncpg.Record) -> _DeviceState:
    open_alerts = frozenset(row["open_alerts"] or ())
    if row["last_period_end"] is None:  # first reading of this device (it may already be silent)
        return _DeviceState(None, 0, open_alerts=open_alerts)
    return _DeviceState(
        point=Point(epoch(row["last_period_end"]), epoch(row["last_device_time"]), row["last_seq"],
                    row["last_index"], 0, ()),
        readings=row["readings"],
        last_seen=row["last_seen"].timestamp(),
        interval=row["interval_seconds"],
        first_bucket=epoch(row["first_bucket"]) if row["first_bucket"] else None,
        last_zero_flow=epoch(row["last_zero_flow"]) if row["last_zero_flow"] else None,
        finest=row["finest_bucket"],
        open_alerts=open_alerts,
    )


async def _update_history(
    conn: asyncpg.Connection, fresh: list[Reading], deltas: Deltas, alerts: AlertChanges, replay: bool
) -> tuple[int, int]:
    """Gap volumes around each new reading, device state, and the alerts the state implies."""
    if not fresh:
        return 0, 0
    keys = sorted({(r.protocol, r.device) for r in fresh})
    states: dict[tuple[str, str], _DeviceState] = {k: _DeviceState(None, 0) for k in keys}
    for row in await conn.fetch(_STATE, [k[0] for k in keys], [k[1] for k in keys]):
        states[(row["protocol"], row["device_id"])] = _state_from_row(row)
    stored = {k for k, state in states.items() if state.point is not None}  # every state row has a last reading
    # The alert rules see the readings one at a time, in the order they came: what each would have found
    # stored alone, so the alerts table does not depend on how readings were batched. What a reading moves
    # in the state (latest reading, first bucket, finest width, last zero-flow end) does not depend on the
    # order within a batch, so the walk below, in period order, ends where this one does.
    judging = {k: replace(s) for k, s in states.items()}
    for r in fresh:
        state = judging[(r.protocol, r.device)]
        state.take(r)
        judge(state, r, alerts, replay)
    gaps = _GapWriter()
    late: list[Reading] = []
    for r in sorted(fresh, key=lambda r: (r.protocol, r.device, Point.of(r).key)):
        state = states[(r.protocol, r.device)]
        before = state.point
        if state.take(r):
            # The usual case, in order: the previous reading is the device's last.
            if before is not None:
                gaps.put(r.protocol, r.device, before, Point.of(r))
        else:
            late.append(r)
    if late:
        # Late readings: the gaps on both sides are recomputed from the stored history (readings holds
        # every reading of the batch already). Their keys never meet the in-order ones above.
        for row in await conn.fetch(
            _NEIGHBOURS, [r.protocol for r in late], [r.device for r in late], [ts(r.device_time) for r in late],
            [r.seq for r in late],
        ):
            r = late[row["i"] - 1]
            point = Point.of(r)
            period_end = codec_of(r.protocol).period_end
            before, after = Point.from_row(row, period_end, "b_"), Point.from_row(row, period_end, "a_")
            if before is not None:
                gaps.put(r.protocol, r.device, before, point)
            if after is not None:
                gaps.put(r.protocol, r.device, point, after, b_stored_before=True)
    written, resets = await gaps.flush(conn, deltas)
    changed = [(k, s) for k, s in states.items() if s.last is not None]
    unchanged = [(k, s) for k, s in states.items() if s.last is None]
    if unchanged:
        # Only late readings arrived: the last reading stays; counts, flow history and receive time move.
        await conn.execute(
            "UPDATE device_state d SET readings = d.readings + u.n, last_seen = GREATEST(d.last_seen, u.seen),"
            " first_bucket = u.first, last_zero_flow = u.zero, finest_bucket = u.finest"
            " FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $5::timestamptz[],"
            "             $6::timestamptz[], $7::int[]) AS u(p, dev, n, seen, first, zero, finest)"
            " WHERE d.protocol = u.p AND d.device_id = u.dev",
            [k[0] for k, _ in unchanged], [k[1] for k, _ in unchanged],
            [s.added for _, s in unchanged], [ts_float(s.seen) for _, s in unchanged],
            [_ts_or_none(s.first_bucket) for _, s in unchanged], [_ts_or_none(s.last_zero_flow) for _, s in unchanged],
            [s.finest for _, s in unchanged],
        )
    for statement, group in ((_UPDATE_STATE, [(k, st) for k, st in changed if k in stored]),
                             (_INSERT_STATE, [(k, st) for k, st in changed if k not in stored])):
        if not group:
            continue
        lasts = [st.last for _, st in group if st.last]
        await conn.execute(
            statement,
            [k[0] for k, _ in group], [k[1] for k, _ in group],
            [ts(r.period_end) for r in lasts], [ts(r.device_time) for r in lasts],
            [r.seq for r in lasts], [r.index for r in lasts], [r.battery_mv for r in lasts],
            [r.flags for r in lasts], [ts_float(max(st.seen, st.last_seen or 0.0)) for _, st in group],
            [st.readings for _, st in group], [st.interval for _, st in group],
            [_ts_or_none(st.first_bucket) for _, st in group], [_ts_or_none(st.last_zero_flow) for _, st in group],
            [st.finest for _, st in group],
        )
    return written, resets


def _ts_or_none(seconds: int | None) -> object:
    return None if seconds is None else ts(seconds)
