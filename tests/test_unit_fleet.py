"""The simulated fleets' one numbering (simulator/fleet.py), read by the simulator's meters, the benchmark's
load plans and the ids a fleet registers: no process, no server."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pulsestack.wire.codecs import CODECS, PROTOCOLS
from simulator.fleet import build_fleet, fleet_ids, simulated
from simulator.plans import HourlyFleet, RampPool

shares = st.floats(0, 1)


@given(devices=st.integers(0, 40), nbiot_share=shares, lorawan_share=shares, first_id=st.integers(0, 10**6))
def test_the_meters_built_are_the_devices_registered_in_order(
        devices: int, nbiot_share: float, lorawan_share: float, first_id: int) -> None:
    registered = fleet_ids(devices, nbiot_share, first_id, lorawan_share)
    meters = build_fleet(devices=devices, nbiot_share=nbiot_share, lorawan_share=lorawan_share,
                         master_key=bytes(32), start=0, first_id=first_id)
    assert [(m.protocol, m.device) for m in meters] == [(p, d) for p, ids in registered.items() for d in ids]
    assert all(CODECS[m.protocol].number(m.device) == m.number and simulated(m.protocol, m.device) for m in meters)


@given(protocol=st.sampled_from(PROTOCOLS), size=st.integers(1, 30), first_id=st.integers(0, 10**6))
def test_load_plans_number_their_meters_as_the_simulator_does(protocol: str, size: int, first_id: int) -> None:
    share = {"nbiot": (1.0, 0.0), "sigfox": (0.0, 0.0), "lorawan": (0.0, 1.0)}[protocol]
    expected = fleet_ids(size, share[0], first_id, share[1])[protocol]
    assert HourlyFleet(protocol, size, first_id).ids() == expected
    assert RampPool(protocol, size, first_id, start=0).ids() == expected
