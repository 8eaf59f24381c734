"""Registry operations on the `devices` table, each followed by a KV sync of what it touched."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import orjson
from nats.js.kv import KeyValue

from pulsestack import keys
from pulsestack.registry.membership import SHARDS, device_number, keyver_key, members_key, pack, shard_of
from pulsestack.wire import sigfox


def canonical(protocol: str, device: str) -> str:
    """The canonical text form; raises ValueError for an id the protocol cannot carry."""
    if protocol == "nbiot":
        if not (device.isascii() and device.isdigit()) or not 0 <= int(device) < 2**64:
            raise ValueError(f"{device!r} is not an NB-IoT device id: a decimal number below 2^64 (an IMEI)")
        return str(int(device))
    if protocol == "sigfox":
        if not 1 <= len(device) <= 8 or any(c not in "0123456789abcdefABCDEF" for c in device):
            raise ValueError(f"{device!r} is not a Sigfox device id: 1 to 8 hex digits")
        return sigfox.canonical_device(device)
    raise ValueError(f"unknown protocol {protocol!r}")


@dataclass(frozen=True, slots=True)
class Device:
    protocol: str
    device_id: str
    key_version: int
    label: str | None
    disabled: bool


async def sync_shards(conn: asyncpg.Connection, kv: KeyValue, protocol: str, shards: Iterable[int]) -> None:
    """Rewrites the KV value of each shard from the table: idempotent, so a lost update heals on the next."""
    for shard in sorted(set(shards)):
        rows = await conn.fetch(
            "SELECT device_id FROM devices WHERE protocol = $1 AND shard = $2 AND NOT disabled", protocol, shard
        )
        await kv.put(members_key(protocol, shard), pack(device_number(protocol, r["device_id"]) for r in rows))


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
    canonical_ids = [canonical(protocol, d) for d in ids]
    async with conn.transaction():
        await conn.execute("CREATE TEMP TABLE new_devices (device_id text, shard smallint) ON COMMIT DROP")
        await conn.copy_records_to_table(
            "new_devices", records=[(d, shard_of(device_number(protocol, d))) for d in canonical_ids]
        )
        await conn.execute(
            "INSERT INTO devices (protocol, device_id, shard) SELECT $1, device_id, shard FROM new_devices"
            " ON CONFLICT (protocol, device_id) DO UPDATE SET disabled = false, updated_at = now()",
            protocol,
        )
    await sync_shards(conn, kv, protocol, {shard_of(device_number(protocol, d)) for d in canonical_ids})


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


async def list_devices(conn: asyncpg.Connection, protocol: str | None, limit: int | None) -> list[Device]:
    """Devices in id order; `limit` None lists them all."""
    rows = await conn.fetch(
        "SELECT protocol, device_id, key_version, label, disabled FROM devices"
        " WHERE $1::text IS NULL OR protocol = $1 ORDER BY protocol, device_id LIMIT $2",
        protocol, limit,
    )
    return [Device(r["protocol"], r["device_id"], r["key_version"], r["label"], r["disabled"]) for r in rows]


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
    number = float(value)
    if number <= 0:
        raise ValueError(f"{name} must be positive")
    return number


async def update_settings(
    conn: asyncpg.Connection, protocol: str, device: str, changes: dict[str, str]
) -> dict[str, object]:
    """Merges validated settings into the device's; returns them. A time zone change applies to new
    readings; `pulsestack reprocess` re-cuts the days of older ones."""
    device = canonical(protocol, device)
    values = {name: _setting(name, value) for name, value in changes.items()}
    merged = await conn.fetchval(
        "UPDATE devices SET settings = settings || $3::jsonb, updated_at = now()"
        " WHERE protocol = $1 AND device_id = $2 RETURNING settings",
        protocol, device, orjson.dumps(values).decode(),
    )
    if merged is None:
        raise LookupError(f"{protocol} device {device} is not registered")
    result: dict[str, object] = orjson.loads(merged)
    return result
