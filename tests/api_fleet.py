"""Devices for the read API's tests: registered disabled, with labels under a prefix of one run, so the
alerting sweep never marks them silent behind a test's back and other tests' devices never match; their
alerts and rollup rows are written straight into the tables, as the raw stage and the sweep leave them."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

import asyncpg
import orjson

from pulsestack.registry.devices import canonical
from pulsestack.registry.membership import shard_of
from tests.helpers import unique_number

LABEL_TAILS = ("a1", "ab", "%x", "_y", "A")  # LIKE's wildcards among them: a prefix is taken literally
HOURS = 1000  # of the large export, for each of its devices
LARGE_DEVICES = 40
# Inside every rollup's retention (24 months of hours), and before anything the other tests send.
START = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=600)


@dataclass(frozen=True)
class Device:
    protocol: str
    device: str
    label: str
    alerts: frozenset[str]  # kinds of its open alerts
    weight: float | None = None
    zone: str | None = None


@dataclass(frozen=True)
class Fleet:
    prefix: str
    devices: list[Device]  # in (protocol, device) order, as the API lists them
    large: list[Device]  # those with HOURS hourly rows from START


def _devices(prefix: str) -> list[Device]:
    devices = []
    for i in range(60):
        protocol = ("nbiot", "sigfox")[i % 2]
        number = unique_number(0x7D000000 if protocol == "sigfox" else 860_000_000_000_000)
        device = canonical(protocol, f"{number:X}" if protocol == "sigfox" else str(number))
        alerts = (frozenset(), frozenset({"silent"}), frozenset({"leak"}), frozenset({"silent", "battery_low"}))[i % 4]
        weight = (None, 2.5, 0.001)[i % 3]
        zone = (None, "Pacific/Kiritimati", "America/Adak")[i % 3]
        devices.append(Device(protocol, device, prefix + LABEL_TAILS[i % len(LABEL_TAILS)], alerts, weight, zone))
    return sorted(devices, key=lambda d: (d.protocol, d.device))


async def _store(url: str, fleet: Fleet) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            "INSERT INTO devices (protocol, device_id, shard, label, settings, disabled)"
            " VALUES ($1, $2, $3, $4, $5::jsonb, true)",
            [(d.protocol, d.device, shard_of(int(d.device, 16 if d.protocol == "sigfox" else 10)), d.label,
              orjson.dumps({k: v for k, v in (("pulse_weight", d.weight), ("timezone", d.zone)) if v}).decode())
             for d in fleet.devices],
        )
        # Open alerts as the sweep and the raw stage leave them, already published (the outbox skips them);
        # a resolved silent alert on every device, which must not count.
        await conn.executemany(
            "INSERT INTO alerts (protocol, device_id, kind, resolved_at, published_open, published_resolved)"
            " VALUES ($1, $2, $3, $4, true, true)",
            [(d.protocol, d.device, kind, None) for d in fleet.devices for kind in d.alerts]
            + [(d.protocol, d.device, "silent", START) for d in fleet.devices],
        )
        # Every device's hours, some without pulses (the API leaves those out).
        await conn.execute(
            "INSERT INTO gap_hourly (protocol, device_id, hour, pulses)"
            " SELECT p, d, $3::timestamptz + make_interval(hours => h), (h * 7 + length(d)) % 11"
            " FROM unnest($1::text[], $2::text[]) AS u(p, d), generate_series(0, $4 - 1) AS h",
            [d.protocol for d in fleet.large], [d.device for d in fleet.large], START, HOURS,
        )
        await conn.execute(
            "INSERT INTO consumption_daily (protocol, device_id, day, pulses)"
            " SELECT p, d, $3::date + n, n % 5 FROM unnest($1::text[], $2::text[]) AS u(p, d),"
            " generate_series(0, 9) AS n",
            [d.protocol for d in fleet.devices], [d.device for d in fleet.devices], START.date(),
        )
    finally:
        await conn.close()


async def api_fleet(url: str) -> Fleet:
    prefix = f"api-{secrets.token_hex(4)}-"
    devices = _devices(prefix)
    fleet = Fleet(prefix, devices, devices[:LARGE_DEVICES])
    await _store(url, fleet)
    return fleet
