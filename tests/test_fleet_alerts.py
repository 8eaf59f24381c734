"""Alerts from a simulated fleet: the simulator's leaking meters raise leak alerts, its silent meters
silent-meter alerts, and each resolves when its condition clears."""

from __future__ import annotations

import os

import asyncpg

from pulsestack.wire import nbiot
from pulsestack_cli.local import LocalStack
from simulator.fleet import NBIOT_BASE, fleet_ids
from simulator.profiles import HOUSEHOLD, LEAK, SILENT, WRAP, Profiles
from simulator.run import Simulation, SimulationConfig
from tests.helpers import UdpDevice, device_key, eventually

DEVICES = 40
HOURS = 30  # readings per meter: a day and a quarter of device time
PROFILES = Profiles(leak_share=0.25, silent_share=0.15, wrap_share=0.1)


async def open_alerts(db: asyncpg.Connection, kind: str, devices: list[str]) -> set[str]:
    rows = await db.fetch(
        "SELECT device_id FROM alerts WHERE kind = $1 AND resolved_at IS NULL AND device_id = ANY($2)", kind, devices
    )
    return {r["device_id"] for r in rows}


async def test_leaking_and_silent_meters_raise_and_resolve(stack: LocalStack, db: asyncpg.Connection) -> None:
    # Fresh ids per run; the first block (of DEVICES) from the pid's whose fleet holds every kind: a small
    # fleet can lack one (a CI run drew 40 meters without a wrapping one).
    for block in range(os.getpid() % 1000, os.getpid() % 1000 + 1000):
        first_id = 700_000 + block * 100
        ids = fleet_ids(DEVICES, 1.0, first_id)["nbiot"]
        kinds = {d: PROFILES.kind(int(d)) for d in ids}
        by_kind = {k: sorted(d for d, kind in kinds.items() if kind == k) for k in (HOUSEHOLD, LEAK, SILENT, WRAP)}
        if all(by_kind.values()):
            break
    assert all(by_kind.values()), f"the fleet lacks a kind: { {k: len(v) for k, v in by_kind.items()} }"
    await stack.provision(DEVICES, 1.0, first_id)
    reporting = DEVICES - len(by_kind[SILENT])
    simulation = Simulation(SimulationConfig(
        devices=DEVICES, nbiot_share=1.0, rate=300, readings=reporting * HOURS,
        udp_target=("127.0.0.1", stack.udp_port), master_key=stack.master_key, first_id=first_id,
        profiles=PROFILES, start_age=3 * 86_400,
    ))
    report = await simulation.run(settle_timeout=30)
    assert sum(report.acked.values()) == reporting * HOURS, report.lines()

    # Every leaking meter flowed for more than 24 h: a leak alert each; the others had dry quarter-hours.
    assert await eventually(lambda: _equal(open_alerts(db, "leak", ids), set(by_kind[LEAK])), timeout=30)
    # Silent meters never reported: the sweep finds them (3 default intervals after registration).
    assert await eventually(lambda: _equal(open_alerts(db, "silent", by_kind[SILENT]), set(by_kind[SILENT])),
                            timeout=30)
    # Index wraps are increases, not meter resets.
    assert await db.fetchval("SELECT count(*) FROM meter_events WHERE device_id = ANY($1)", by_kind[WRAP]) == 0

    # A dry quarter-hour ends a leak; a first reading ends a silence.
    for meter in simulation.meters:
        if kinds[meter.device] == LEAK:
            device = UdpDevice(stack, meter.number)
            ack = await device.send(seq=meter.seq + 1, period_end=meter.next_period_end, counts=[3, 0, 3, 3],
                                    index=(meter.index + 9) % 2**32)
            assert ack == (meter.seq + 1, nbiot.ACK_STORED)
            device.close()
    for name in by_kind[SILENT]:
        device = UdpDevice(stack, int(name), device_key(stack, int(name)))
        assert await device.send(seq=1) == (1, nbiot.ACK_STORED)
        device.close()
    assert await eventually(lambda: _equal(open_alerts(db, "leak", ids), set()), timeout=30)
    assert await eventually(lambda: _equal(open_alerts(db, "silent", by_kind[SILENT]), set()), timeout=30)
    assert NBIOT_BASE + first_id == int(ids[0])


async def _equal(found, expected):  # type: ignore[no-untyped-def]
    return (await found) == expected
