"""One device's history, generated: the answers the product gives are the same live, after `reprocess`, and
in a small pure model of the rules written here, apart from the product's code (so a bug both paths share
is caught too).

A history has random counts, gaps, overlaps, readings of the same period, index wraps and resets; it
arrives shuffled, late and with duplicates. The answers compared are what queries return — per-bucket
consumption, gaps, reset events, hourly and daily totals from the read API, the device's state from the read
API (less the arrival-dependent `last_seen` and `interval_seconds`) — not how the tables lay them out.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise
from typing import Any

import aiohttp
import asyncpg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pulsestack.store.reprocess import reprocess
from pulsestack_cli.local import LocalStack
from tests.helpers import UdpDevice, eventually, now_aligned, register, unique_number

WIDTH = 900  # every reading's buckets are 15 minutes wide
SLOT = 900
WRAP = 2**32
LEAK_WINDOW = 86_400
# NB-IoT frame bit -> (the protocol-neutral flag the product stores, the alert it keeps open).
FLAGS = {0x02: (1, "battery_low"), 0x04: (2, "tamper"), 0x08: (4, "reverse_flow")}


@dataclass(frozen=True)
class Sent:
    seq: int
    period_end: int
    counts: tuple[int, ...]
    index: int
    battery_mv: int
    flags: int

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.period_end, self.period_end, self.seq)  # NB-IoT: device time is the period end

    @property
    def first(self) -> int:
        return self.period_end - len(self.counts) * WIDTH


# ------------------------------------------------------------------ the model


def model_spread(start: int, end: int, volume: int) -> dict[int, int]:
    """Volume over the 15-minute slots of [start, end) in proportion to time, as integers: floors, then the
    units left to the largest exact remainders, earlier slot first on a tie; a negative volume exactly
    mirrors the positive one; an instant takes it whole."""
    if end <= start:
        return {start - start % SLOT: volume}
    sign, volume = (-1, -volume) if volume < 0 else (1, volume)
    edges = sorted({start, end, *range(start - start % SLOT + SLOT, end, SLOT)})
    exact = [(lo - lo % SLOT, Fraction(volume * (hi - lo), end - start)) for lo, hi in pairwise(edges)]
    shares = {slot: int(share) for slot, share in exact}
    left = volume - sum(shares.values())
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i][1] - int(exact[i][1])), i))
    for i in by_remainder[:left]:
        shares[exact[i][0]] += 1
    return {slot: sign * n for slot, n in shares.items()}


def model(history: list[Sent]) -> dict[str, Any]:
    """The answers the rules give for a set of readings, whatever order they arrived in."""
    readings = sorted(set(history), key=lambda r: r.key)
    buckets: dict[int, tuple[tuple[int, int], int]] = {}
    for r in readings:
        rank = (r.period_end, r.seq)  # a later device time, then seq, wins a contested bucket
        for i, count in enumerate(r.counts):
            start = r.first + i * WIDTH
            held = buckets.get(start)
            if held is None or held[0] < rank:
                buckets[start] = (rank, count)
    slots: dict[int, int] = defaultdict(int)
    for start, (_, count) in buckets.items():
        slots[start - start % SLOT] += count
    gaps, resets = [], []
    for a, b in pairwise(readings):
        diff = (b.index - a.index) % WRAP
        if diff > WRAP // 2:  # the index went backwards: a reset, not a flow
            resets.append((b.period_end, b.seq, a.index, b.index))
            continue
        covered = sum(c for i, c in enumerate(b.counts) if b.first + i * WIDTH >= a.period_end)
        volume = diff - covered
        if volume == 0:
            continue
        interval = (a.period_end, b.first) if b.first > a.period_end and volume > 0 else (a.period_end, a.period_end)
        gaps.append((*interval, volume, "gap" if interval[1] > interval[0] else "adjustment"))
        for slot, n in model_spread(*interval, volume).items():
            slots[slot] += n
    hourly: dict[int, int] = defaultdict(int)
    daily: dict[str, int] = defaultdict(int)
    for slot, n in slots.items():
        hourly[slot - slot % 3600] += n
        daily[dt.datetime.fromtimestamp(slot, dt.UTC).date().isoformat()] += n
    last = readings[-1]
    first_bucket = min(r.first for r in readings)
    zero_ends = [r.first + (i + 1) * WIDTH for r in readings for i, c in enumerate(r.counts) if c == 0]
    flowing_since = max(zero_ends) if zero_ends else first_bucket
    alerts = {name for bit, (_, name) in FLAGS.items() if last.flags & bit}
    if last.period_end - flowing_since >= LEAK_WINDOW:
        alerts.add("leak")
    return {
        "buckets": {start: count for start, (_, count) in buckets.items()},
        "gaps": sorted(gaps),
        "resets": sorted(resets),
        "hourly": {h: n for h, n in hourly.items() if n},
        "daily": {d: n for d, n in daily.items() if n},
        "state": {"last_period_end": last.period_end, "last_seq": last.seq, "last_index": last.index,
                  "battery_mv": last.battery_mv,
                  "flags": sum(flag for bit, (flag, _) in FLAGS.items() if last.flags & bit),
                  "readings": len(readings),
                  "open_alerts": sorted(alerts)},
    }


# ------------------------------------------------------------- the product's answers


def _epoch(value: dt.datetime) -> int:
    return int(value.timestamp())


async def answers(db: asyncpg.Connection, stack: LocalStack, device: str, since: int, until: int) -> dict[str, Any]:
    buckets = {_epoch(r["bucket_start"]): r["count"] for r in await db.fetch(
        "SELECT bucket_start, count FROM buckets WHERE protocol = 'nbiot' AND device_id = $1", device)}
    gaps = sorted(
        (_epoch(r["interval_start"]), _epoch(r["interval_end"]), r["volume"], r["kind"]) for r in await db.fetch(
            "SELECT interval_start, interval_end, volume, kind FROM gaps WHERE protocol = 'nbiot' AND device_id = $1",
            device))
    resets = sorted((_epoch(r["at"]), r["seq"], r["from_index"], r["to_index"]) for r in await db.fetch(
        "SELECT at, seq, from_index, to_index FROM meter_events WHERE protocol = 'nbiot' AND device_id = $1"
        " AND kind = 'reset'", device))
    base = f"http://127.0.0.1:{stack.api_port}/v1/devices/nbiot/{device}"
    window = {"from": dt.datetime.fromtimestamp(since, dt.UTC).isoformat(),
              "to": dt.datetime.fromtimestamp(until, dt.UTC).isoformat()}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {stack.api_token}"}) as http:
        series = {}
        for resolution in ("hour", "day"):
            async with http.get(f"{base}/consumption", params={**window, "resolution": resolution}) as response:
                assert response.status == 200, await response.text()
                series[resolution] = (await response.json())["points"]
        async with http.get(f"{base}/state") as response:
            assert response.status == 200, await response.text()
            state = await response.json()
    return {
        "buckets": buckets,
        "gaps": gaps,
        "resets": resets,
        "hourly": {_epoch(dt.datetime.fromisoformat(p["start"])): p["pulses"] for p in series["hour"]},
        "daily": {p["start"]: p["pulses"] for p in series["day"]},
        "state": {
            "last_period_end": _epoch(dt.datetime.fromisoformat(state["last_period_end"])),
            "last_seq": state["last_seq"], "last_index": state["last_index"], "battery_mv": state["battery_mv"],
            "flags": state["flags"], "readings": state["readings"],
            # Silence depends on the wall clock (the sweep runs beside the test), not on the history.
            "open_alerts": sorted(set(state["open_alerts"]) - {"silent"}),
        },
    }


# ---------------------------------------------------------------- histories


History = tuple[list[Sent], list[Sent], list[bool]]


@st.composite
def histories(draw: st.DrawFn) -> History:
    """(the readings in device order, the order they arrive in with duplicates, whether the pipeline has
    stored everything sent so far before the next one is sent — so a reading is late against stored history,
    not only within a batch)."""
    start = now_aligned(86_400, 20 * 86_400)  # well inside the ingesters' 30-day clock window
    index = draw(st.one_of(st.integers(0, 10_000), st.integers(WRAP - 300, WRAP - 1)))  # near a wrap, sometimes
    period_end = start
    readings = []
    for seq in range(1, draw(st.integers(2, 9)) + 1):
        width = draw(st.integers(1, 8))
        # Contiguous, a gap, an overlap, the same period again (a device that rebooted), or two days and more
        # of silence (a late reading's neighbours then lie beyond the store's near search, pulses.NEAR_HOURS).
        step = draw(st.sampled_from([width, width, width + 1, width + 6, max(1, width - 2), 0, width + 200]))
        period_end += (step if seq > 1 else width) * WIDTH
        counts = tuple(draw(st.lists(st.integers(0, 40), min_size=width, max_size=width)))
        change = draw(st.sampled_from(["flow", "flow", "unseen", "missed", "reset"]))
        if change == "reset":  # a meter replaced or reset: the index starts again low
            index = draw(st.integers(0, 50))
        else:
            extra = {"flow": 0, "unseen": draw(st.integers(1, 200)), "missed": -draw(st.integers(1, 30))}[change]
            index = (index + sum(counts) + extra) % WRAP
        readings.append(Sent(seq, period_end, counts, index, draw(st.sampled_from([3600, 3100, 2400])),
                             draw(st.sampled_from([0, 0, 0, 0x02, 0x04, 0x08]))))
    arrival = [*draw(st.permutations(readings)), *draw(st.lists(st.sampled_from(readings), max_size=3))]
    return readings, arrival, draw(st.lists(st.booleans(), min_size=len(arrival), max_size=len(arrival)))


def _issue_17(late_index: int) -> History:
    """Issue #17's history: A (index 5000), then C (8, a reset), then B late between them."""
    start = now_aligned(86_400, 20 * 86_400)
    a, b, c = (Sent(seq, start + seq * 3600, (1, 1, 1, 1), index, 3600, 0)
               for seq, index in ((1, 5000), (2, late_index), (3, 8)))
    return [a, b, c], [a, c, b], [True, True, True]


async def stored(db: asyncpg.Connection, device: str, n: int) -> bool:
    count = await db.fetchval(
        "SELECT readings FROM device_state WHERE protocol = 'nbiot' AND device_id = $1", device)
    return bool(count == n)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(history=histories())
@example(history=_issue_17(5010))
@example(history=_issue_17(4))
async def test_live_reprocessed_and_modelled_answers_agree(
    stack: LocalStack, db: asyncpg.Connection, history: History
) -> None:
    readings, arrival, settle = history
    number = unique_number(356_938_700_000_000)
    device = str(number)
    await register(stack, "nbiot", [device])
    udp = UdpDevice(stack, number)
    sent: set[Sent] = set()
    try:
        for r, wait in zip(arrival, settle, strict=True):
            ack = await udp.send(seq=r.seq, period_end=r.period_end, counts=list(r.counts), index=r.index,
                                 battery_mv=r.battery_mv, flags=r.flags, wait=5.0)
            assert ack is not None and ack[0] == r.seq
            sent.add(r)
            if wait:
                await eventually(lambda: stored(db, device, len(sent)), timeout=30)
    finally:
        udp.close()
    await eventually(lambda: stored(db, device, len(readings)), timeout=30)
    since = readings[0].first - 2 * 86_400
    until = readings[-1].period_end + 2 * 86_400
    expected = model(readings)
    live = await answers(db, stack, device, since, until)
    assert live == expected
    report = await reprocess(db, protocol="nbiot", devices=[device])
    assert (report.readings, report.undecodable) == (len(readings), 0)
    assert await answers(db, stack, device, since, until) == expected


# ------------------------------------------------------- the model on its own


def test_the_model_reads_a_late_reading_between_a_reset() -> None:
    """The two histories of issue #17: A (5000), C (8) a reset; then B arrives late between them."""
    a = Sent(1, 3600, (1, 1, 1, 1), 5000, 3600, 0)
    c = Sent(3, 3 * 3600, (1, 1, 1, 1), 8, 3600, 0)
    assert model([a, c])["resets"] == [(3 * 3600, 3, 5000, 8)]
    assert model([a, c, Sent(2, 2 * 3600, (1, 1, 1, 1), 5010, 3600, 0)])["resets"] == [(3 * 3600, 3, 5010, 8)]
    assert model([a, c, Sent(2, 2 * 3600, (1, 1, 1, 1), 4, 3600, 0)])["resets"] == [(2 * 3600, 2, 5000, 4)]


@given(start=st.integers(0, 10**6), length=st.integers(0, 3 * 86_400), volume=st.integers(-(10**6), 10**6))
def test_the_models_spread_keeps_the_volume(start: int, length: int, volume: int) -> None:
    shares = model_spread(start, start + length, volume)
    assert sum(shares.values()) == volume
    assert all(slot % SLOT == 0 for slot in shares)
