"""Devices, their identities and the readings they produce."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pulsestack import keys
from pulsestack.wire import lorawan, nbiot, sigfox
from pulsestack.wire.codecs import CODECS
from simulator.profiles import SILENT, Profiles

NBIOT_BASE = 356_938_035_600_000  # IMEI-like decimal ids
SIGFOX_BASE = 0x1A0000
LORAWAN_BASE = 0x70B3D57E00000000  # EUI-64 DevEUIs
# Each protocol's simulated ids start here.
BASES = {nbiot.PROTOCOL: NBIOT_BASE, sigfox.PROTOCOL: SIGFOX_BASE, lorawan.PROTOCOL: LORAWAN_BASE}
BUCKET_SECONDS = 900
BUCKETS = 4
READING_SECONDS = BUCKET_SECONDS * BUCKETS


@dataclass(frozen=True, slots=True)
class SentReading:
    """What a device sent: enough to verify delivery and totals afterwards."""

    protocol: str
    device: str
    seq: int
    device_time: int
    period_end: int
    index: int
    counts: tuple[int, ...]


@dataclass(slots=True)
class Meter:
    protocol: str
    device: str
    number: int
    key: bytes
    next_period_end: int
    seq: int = 0
    index: int = 0
    rng: random.Random = field(default_factory=random.Random)
    profiles: Profiles | None = None  # None: uniformly random counts

    def due(self, now: float) -> bool:
        return self.next_period_end <= now

    @property
    def silent(self) -> bool:
        return self.profiles is not None and self.profiles.kind(self.number) == SILENT

    def resume(self, last_period_end: int, last_seq: int, last_index: int) -> None:
        """Continues after the last reading the store holds: the next seq (Sigfox's wraps at 4096, as
        `next_reading` does) and the next period after it, never before this meter's own start, so a
        reading is neither a duplicate of a stored one nor older than the ingesters accept."""
        self.seq, self.index = last_seq, last_index
        self.next_period_end = max(self.next_period_end, last_period_end + READING_SECONDS)

    def next_reading(self) -> SentReading:
        if self.profiles is not None:
            counts = self.profiles.counts(self.number, self.next_period_end, BUCKETS, BUCKET_SECONDS)
        else:
            counts = tuple(self.rng.choice((0, 0, 1, 2, 3, 5, 8, 13)) for _ in range(BUCKETS))
        self.seq = (self.seq + 1) % CODECS[self.protocol].seq_modulus
        self.index = (self.index + sum(counts)) % 2**32
        period_end = self.next_period_end
        self.next_period_end += READING_SECONDS
        device_time = sent_time(self.protocol, self.number, period_end)
        return SentReading(self.protocol, self.device, self.seq, device_time, period_end, self.index, counts)


def reception_offset(number: int) -> int:
    """When, after its last bucket, a radio meter's message is received: within the following quarter hour,
    spread over the meters."""
    return number % 600


def carried_time(protocol: str, period_end: int, received: int) -> int:
    """The device time a reading carries: a Sigfox message's is its reception; an NB-IoT frame's is its
    period end, and so is a LoRaWAN uplink's (its reception rounded down to the quarter hour)."""
    return received if protocol == sigfox.PROTOCOL else period_end


def sent_time(protocol: str, number: int, period_end: int) -> int:
    """The device time a meter's reading carries when it is received `reception_offset` after its period."""
    return carried_time(protocol, period_end, period_end + reception_offset(number))


def simulated_number(protocol: str, i: int) -> int:
    """The number of a simulated fleet's i-th meter of a protocol (a fleet's `first_id` counted in `i`): the
    one numbering of every simulated fleet, the simulator's and the benchmark's load plans alike."""
    return BASES[protocol] + i


def simulated_id(protocol: str, i: int) -> str:
    return CODECS[protocol].text(simulated_number(protocol, i))


def simulated(protocol: str, device: str) -> bool:
    """Whether an id is one a simulated fleet uses (offsets below 2^24 from its protocol's base)."""
    base = BASES[protocol]
    return base <= CODECS[protocol].number(device) < base + 2**24


def _mix(devices: int, nbiot_share: float, lorawan_share: float) -> tuple[int, int]:
    """How many of a fleet's meters are NB-IoT and LoRaWAN (Sigfox the rest)."""
    n_nbiot = round(devices * nbiot_share)
    return n_nbiot, min(round(devices * lorawan_share), devices - n_nbiot)


def fleet_ids(devices: int, nbiot_share: float, first_id: int = 0, lorawan_share: float = 0.0) -> dict[str, list[str]]:
    """The ids of a fleet per protocol (NB-IoT's share, LoRaWAN's share, Sigfox the rest); `first_id` keeps
    fleets of different runs apart."""
    n_nbiot, n_lorawan = _mix(devices, nbiot_share, lorawan_share)
    n_sigfox = devices - n_nbiot - n_lorawan
    counts = {nbiot.PROTOCOL: n_nbiot, sigfox.PROTOCOL: n_sigfox, lorawan.PROTOCOL: n_lorawan}
    return {protocol: [simulated_id(protocol, first_id + i) for i in range(n)] for protocol, n in counts.items()}


def build_fleet(
    *, devices: int, nbiot_share: float, master_key: bytes, start: int, seed: int = 1, first_id: int = 0,
    profiles: Profiles | None = None, lorawan_share: float = 0.0,
) -> list[Meter]:
    """`devices` meters, `nbiot_share` of them NB-IoT, `lorawan_share` LoRaWAN, Sigfox the rest; the first
    reading of each ends at `start`.

    With `profiles`, counts follow the meter's kind (household, leak, wrap) and silent meters are left
    out of the list (they are registered by `fleet_ids` but never report)."""
    start -= start % READING_SECONDS
    meters = []
    by_protocol = fleet_ids(devices, nbiot_share, first_id, lorawan_share)
    placed = [(protocol, first_id + j) for protocol, ids in by_protocol.items() for j in range(len(ids))]
    for i, (protocol, position) in enumerate(placed):
        number, device = simulated_number(protocol, position), simulated_id(protocol, position)
        rng = random.Random(seed * 1_000_003 + i)
        key = keys.derive(master_key, protocol, device) if CODECS[protocol].keyed else b""
        index = profiles.initial_index(number) if profiles else rng.randrange(2**20)
        meter = Meter(protocol, device, number, key, start, index=index, rng=rng, profiles=profiles)
        if not meter.silent:
            meters.append(meter)
    return meters
