"""Registry operations on the `devices` table, each followed by a KV sync of what it touched."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import asyncpg
import orjson
from nats.js.kv import KeyValue

from pulsestack import keys
from pulsestack.registry.membership import SHARDS, device_number, keyver_key, members_key, pack, shard_of
from pulsestack.wire.codecs import codec_of


def canonical(protocol: str, device: str) -> str:
    """The canonical text form; raises ValueError for an id the protocol cannot carry."""
    return codec_of(protocol).canonical(device)


SHARDS_PER_QUERY = 64


@dataclass(frozen=True, slots=True)
class Device:
    protocol: str
    device_id: str
    key_version: int
    label: str | None
    disabled: bool
    settings: dict[str, object]


async def sync_shards(conn: asyncpg.Connection, kv: KeyValue, protocol: str, shards: Iterable[int]) -> None:
    """Rewrites the KV value of each shard from the table: idempotent, so a lost update heals on the next.
    A bulk import syncs up to all 1,024 shards per batch: one query per 64 shards, their puts in flight together,
    instead of two round trips per shard; and never more than 64 shards' ids in memory (10 M devices: 600 k)."""
    wanted = sorted(set(shards))
    for chunk in (wanted[i : i + SHARDS_PER_QUERY] for i in range(0, len(wanted), SHARDS_PER_QUERY)):
        rows = await conn.fetch(
            "SELECT shard, array_agg(device_id) AS ids FROM devices"
            " WHERE protocol = $1 AND shard = ANY($2::smallint[]) AND NOT disabled GROUP BY shard", protocol, chunk
        )
        members = {r["shard"]: r["ids"] for r in rows}
        await asyncio.gather(*(
            kv.put(members_key(protocol, shard), pack(device_number(protocol, d) for d in members.get(shard, ())))
            for shard in chunk))


async def sync_all(conn: asyncpg.Connection, kv: KeyValue) -> int:
    """Rebuilds the whole bucket: every shard of every protocol, and the rotated-key exceptions."""
    protocols = [r["protocol"] for r in await conn.fetch("SELECT DISTINCT protocol FROM devices")]
    for protocol in protocols:
        await sync_shards(conn, kv, protocol, range(SHARDS))
    rotated = await conn.fetch("SELECT protocol, device_id, key_version FROM devices WHERE key_version > 0")
    for row in rotated:
        await kv.put(keyver_key(row["protocol"], row["device_id"]), str(row["key_version"]).encode())
    return len(protocols)


async def add(
    conn: asyncpg.Connection, kv: KeyValue, master: bytes, protocol: str, devices: list[str], label: str | None
) -> dict[str, bytes]:
    """Registers devices (re-enabling any that were disabled); returns each one's key."""
    ids = [canonical(protocol, d) for d in devices]
    await conn.executemany(
        "INSERT INTO devices (protocol, device_id, shard, label) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (protocol, device_id) DO UPDATE SET disabled = false, updated_at = now(),"
        " label = COALESCE(EXCLUDED.label, devices.label)",
        [(protocol, d, shard_of(device_number(protocol, d)), label) for d in ids],
    )
    await sync_shards(conn, kv, protocol, (shard_of(device_number(protocol, d)) for d in ids))
    versions = dict(
        (r["device_id"], r["key_version"])
        for r in await conn.fetch(
            "SELECT device_id, key_version FROM devices WHERE protocol = $1 AND device_id = ANY($2)", protocol, ids
        )
    )
    return {d: keys.derive(master, protocol, d, versions[d]) for d in ids}


async def add_bulk(conn: asyncpg.Connection, kv: KeyValue, protocol: str, ids: list[str]) -> None:
    """Registers many devices at once with COPY (fleets of millions); keys are derivable, not returned."""
    await sync_shards(conn, kv, protocol, await store_bulk(conn, protocol, ids))


async def store_bulk(conn: asyncpg.Connection, protocol: str, ids: list[str]) -> set[int]:
    """The table half of `add_bulk`, for a caller that registers in chunks and syncs the shards once:
    returns the shards it changed."""
    records = [(d, shard_of(device_number(protocol, d))) for d in (canonical(protocol, d) for d in ids)]
    async with conn.transaction():
        await conn.execute("CREATE TEMP TABLE new_devices (device_id text, shard smallint) ON COMMIT DROP")
        await conn.copy_records_to_table("new_devices", records=records)
        await conn.execute(
            "INSERT INTO devices (protocol, device_id, shard) SELECT $1, device_id, shard FROM new_devices"
            " ON CONFLICT (protocol, device_id) DO UPDATE SET disabled = false, updated_at = now()",
            protocol,
        )
    return {shard for _, shard in records}


async def disable(conn: asyncpg.Connection, kv: KeyValue, protocol: str, device: str) -> bool:
    device = canonical(protocol, device)
    status: str = await conn.execute(
        "UPDATE devices SET disabled = true, updated_at = now() WHERE protocol = $1 AND device_id = $2",
        protocol, device,
    )
    await sync_shards(conn, kv, protocol, [shard_of(device_number(protocol, device))])
    return status.endswith(" 1")


async def disable_bulk(conn: asyncpg.Connection, kv: KeyValue, protocol: str, ids: list[str]) -> int:
    """Disables many devices in one statement; returns how many were enabled before."""
    canonical_ids = [canonical(protocol, d) for d in ids]
    status: str = await conn.execute(
        "UPDATE devices SET disabled = true, updated_at = now()"
        " WHERE protocol = $1 AND device_id = ANY($2::text[]) AND NOT disabled",
        protocol, canonical_ids,
    )
    await sync_shards(conn, kv, protocol, {shard_of(device_number(protocol, d)) for d in canonical_ids})
    return int(status.split()[-1])


async def enabled(conn: asyncpg.Connection, devices: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of the (protocol, device id) pairs are registered and not disabled: one statement."""
    pairs = list(devices)
    rows = await conn.fetch(
        "SELECT protocol, device_id FROM devices WHERE NOT disabled AND (protocol, device_id) IN"
        " (SELECT * FROM unnest($1::text[], $2::text[]))",
        [p for p, _ in pairs], [d for _, d in pairs],
    )
    return {(row["protocol"], row["device_id"]) for row in rows}


async def rotate_key(conn: asyncpg.Connection, kv: KeyValue, master: bytes, protocol: str, device: str) -> bytes:
    device = canonical(protocol, device)
    version = await conn.fetchval(
        "UPDATE devices SET key_version = key_version + 1, updated_at = now()"
        " WHERE protocol = $1 AND device_id = $2 RETURNING key_version",
        protocol, device,
    )
    if version is None:
        raise LookupError(f"{protocol} device {device} is not registered")
    await kv.put(keyver_key(protocol, device), str(version).encode())
    return keys.derive(master, protocol, device, version)


_DEVICES = (
    "SELECT protocol, device_id, key_version, label, disabled, settings FROM devices"
    " WHERE ($1::text IS NULL OR protocol = $1) AND (NOT $2 OR NOT disabled) ORDER BY protocol, device_id"
)


def _device(row: asyncpg.Record) -> Device:
    return Device(row["protocol"], row["device_id"], row["key_version"], row["label"], row["disabled"],
                  orjson.loads(row["settings"]))


async def list_devices(conn: asyncpg.Connection, protocol: str | None, limit: int | None) -> list[Device]:
    """Devices in id order; `limit` None lists them all."""
    rows = await conn.fetch(_DEVICES + " LIMIT $3", protocol, False, limit)
    return [_device(r) for r in rows]


async def each_device(conn: asyncpg.Connection, enabled_only: bool) -> AsyncIterator[Device]:
    """Every device in id order, read through a cursor: flat memory however large the fleet."""
    async with conn.transaction():
        async for row in conn.cursor(_DEVICES, None, enabled_only, prefetch=5000):
            yield _device(row)


SETTINGS = {
    "timezone": "IANA time zone for days (rollups, daily limits)",
    "pulse_weight": "litres (or the meter's unit) per pulse",
    "daily_limit": "daily consumption, in that unit, above which a threshold alert opens",
}


def _setting(name: str, value: str) -> object:
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
    if name == "timezone":
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return number


def setting_values(changes: dict[str, str]) -> dict[str, object]:
    """Validated settings from their text forms; raises ValueError naming the first wrong one."""
    return {name: _setting(name, value) for name, value in changes.items()}


async def update_settings(
    conn: asyncpg.Connection, protocol: str, device: str, changes: dict[str, str]
) -> dict[str, object]:
    """Merges validated settings into the device's; returns them. A time zone change applies to new
    readings; `pulsestack reprocess` re-cuts the days of older ones."""
    device = canonical(protocol, device)
    values = setting_values(changes)
    merged = await conn.fetchval(
        "UPDATE devices SET settings = settings || $3::jsonb, updated_at = now()"
        " WHERE protocol = $1 AND device_id = $2 RETURNING settings",
        protocol, device, orjson.dumps(values).decode(),
    )
    if merged is None:
        raise LookupError(f"{protocol} device {device} is not registered")
    result: dict[str, object] = orjson.loads(merged)
    return result


@dataclass(frozen=True, slots=True)
class Entry:
    """One provisioning line, validated: what the device should be (label None and absent settings: as is)."""

    line: int
    protocol: str
    device_id: str
    shard: int
    label: str | None
    settings: dict[str, object]


def entry(line: int, protocol: str, device: str, label: str, settings: dict[str, str]) -> Entry:
    """Validates one line's cells (an empty cell leaves that value as it is); raises ValueError."""
    device_id = canonical(protocol, device)
    return Entry(line, protocol, device_id, shard_of(device_number(protocol, device_id)), label or None,
                 setting_values({name: value for name, value in settings.items() if value}))


@dataclass(slots=True)
class Outcome:
    """What one batch did: devices created (protocol, id, key version), changed, left as they were, and the
    lines refused because their device already appeared earlier in the file (line, reason)."""

    created: list[tuple[str, str, int]] = field(default_factory=list)
    updated: int = 0
    unchanged: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)


class Import:
    """One file's import, batch by batch, each batch one transaction followed by a KV sync of its shards.

    A device already registered gets the line's label and settings (merged into its own); nothing else of it
    changes: a disabled device stays disabled, its key version stays. The first line naming a device wins;
    a later one is refused, checked across batches in a session table of the lines seen, so Python's memory
    stays that of one batch.
    """

    def __init__(self, conn: asyncpg.Connection, kv: KeyValue) -> None:
        self.conn, self.kv = conn, kv
        self._started = False

    async def batch(
        self, entries: list[Entry], before_commit: Callable[[list[tuple[str, str, int]]], None] | None = None
    ) -> Outcome:
        """Stores `entries`; `before_commit` gets the devices created while their transaction is still open
        (a key file written there cannot miss a device that a crash right after the commit left created)."""
        outcome = Outcome()
        async with self.conn.transaction():
            if not self._started:
                await self.conn.execute(
                    "DROP TABLE IF EXISTS import_seen;"
                    " CREATE TEMP TABLE import_seen (protocol text, device_id text, line bigint,"
                    " PRIMARY KEY (protocol, device_id))")
            await self.conn.execute(
                "CREATE TEMP TABLE import_batch (line bigint, protocol text, device_id text, shard smallint,"
                " label text, settings jsonb) ON COMMIT DROP")
            await self.conn.copy_records_to_table("import_batch", records=[
                (e.line, e.protocol, e.device_id, e.shard, e.label, orjson.dumps(e.settings).decode())
                for e in entries])
            await self.conn.execute(
                "INSERT INTO import_seen SELECT DISTINCT ON (protocol, device_id) protocol, device_id, line"
                " FROM import_batch ORDER BY protocol, device_id, line ON CONFLICT DO NOTHING")
            repeated = await self.conn.fetch(
                "DELETE FROM import_batch b USING import_seen s"
                " WHERE s.protocol = b.protocol AND s.device_id = b.device_id AND s.line <> b.line"
                " RETURNING b.line, b.protocol, b.device_id, s.line AS first")
            outcome.refused = [(r["line"], f"{r['protocol']} device {r['device_id']} already on line {r['first']}")
                               for r in repeated]
            # Only rows that differ are written: a rerun of the same file changes nothing, not even updated_at.
            written = await self.conn.fetch(
                "INSERT INTO devices AS d (protocol, device_id, shard, label, settings)"
                " SELECT protocol, device_id, shard, label, settings FROM import_batch"
                " ON CONFLICT (protocol, device_id) DO UPDATE SET label = COALESCE(EXCLUDED.label, d.label),"
                " settings = d.settings || EXCLUDED.settings, updated_at = now()"
                " WHERE d.label IS DISTINCT FROM COALESCE(EXCLUDED.label, d.label)"
                " OR NOT d.settings @> EXCLUDED.settings"
                " RETURNING d.protocol, d.device_id, d.key_version, xmax = 0 AS created")
            outcome.created = [(r["protocol"], r["device_id"], r["key_version"]) for r in written if r["created"]]
            outcome.updated = len(written) - len(outcome.created)
            outcome.unchanged = len(entries) - len(repeated) - len(written)
            if before_commit is not None:
                before_commit(outcome.created)
        self._started = True
        # Every shard the batch names, changed or not: a rerun heals a sync that a crash after the commit missed.
        shards: dict[str, set[int]] = {}
        for e in entries:
            shards.setdefault(e.protocol, set()).add(e.shard)
        for protocol, touched in shards.items():
            await sync_shards(self.conn, self.kv, protocol, touched)
        return outcome
