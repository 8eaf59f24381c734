"""The raw stage's store decisions alone (processors/processors/raw_stage.py over pulsestack/store/): what is a
duplicate, what a reading derives (buckets, gaps, resets, device state, hourly totals), what a late reading
changes; and that the outcome does not depend on arrival order, batching or repeats. One PostgreSQL
connection, no service: each test runs in a transaction that is rolled back, each example in a savepoint.
Then the stage's batch decisions (`process`): what is quarantined, stored, or must come back, with a pool of
one connection and a quarantine subject of the test's own."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import asyncpg
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from processors.raw_stage import RawStage, Stored
from pulsestack.bus.publisher import Publisher
from pulsestack.bus.quarantine import Quarantine, QuarantineRecord, decode_record
from pulsestack.bus.topology import QUARANTINE
from pulsestack.store.writes import write_isolating
from pulsestack.wire.reading import Reading, encode_raw
from pulsestack_cli.local import LocalStack
from tests.helpers import READINGS_OF, device_rows, forget_devices, now_aligned, unique_number

WIDTH = 900
WRAP = 2**32
# `write` needs only the transaction's connection; the pool, publisher and quarantine serve `process`.
STAGE = RawStage(None, None, None)  # type: ignore[arg-type]


def reading(device: str, seq: int, period_end: int, counts: list[int], index: int, flags: int = 0) -> Reading:
    return Reading("nbiot", device, seq, period_end, period_end, WIDTH, counts, index % WRAP, 3600, flags,
                   float(period_end + 5), f"unit-{device}-{seq}", b"")


async def write(conn: asyncpg.Connection, readings: list[Reading]) -> Stored:
    async with conn.transaction():
        await device_rows(conn, readings)
        return await STAGE.write(conn, readings)


async def derived(conn: asyncpg.Connection, device: str) -> dict[str, Any]:
    """What queries answer about the device, less what depends on arrival (its receive times)."""
    def rows(records: list[asyncpg.Record]) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in records]

    return {
        "raw": await conn.fetchval(READINGS_OF, "nbiot", device),
        "buckets": rows(await conn.fetch(
            "SELECT bucket_start, count, seq FROM buckets WHERE device_id = $1 ORDER BY 1", device)),
        "gaps": rows(await conn.fetch(
            "SELECT from_period_end, from_seq, to_seq, interval_start, interval_end, volume, kind FROM gaps"
            " WHERE device_id = $1 ORDER BY 1, 2", device)),
        "resets": rows(await conn.fetch(
            "SELECT at, seq, from_index, to_index FROM meter_events WHERE device_id = $1 ORDER BY 1, 2", device)),
        "state": rows(await conn.fetch(
            "SELECT last_period_end, last_seq, last_index, readings, first_bucket, last_zero_flow, finest_bucket"
            " FROM device_state WHERE device_id = $1", device)),
        "hourly": rows(await conn.fetch(
            "SELECT hour, pulses FROM consumption_hourly WHERE device_id = $1 AND pulses <> 0 ORDER BY 1", device)),
        "alerts": rows(await conn.fetch(
            "SELECT kind FROM alerts WHERE device_id = $1 AND resolved_at IS NULL ORDER BY 1", device)),
    }


def new_device() -> str:
    return str(unique_number(356_938_800_000_000))


async def test_a_repeated_reading_is_stored_once_and_derives_nothing_again(servers_tx: asyncpg.Connection) -> None:
    device = new_device()
    a = reading(device, 1, now_aligned(), [1, 2, 3, 4], 1000)
    first = await write(servers_tx, [a, a])
    assert first.inserted == [True, False] and first.outcome.stored == [a]
    once = await derived(servers_tx, device)
    assert once["raw"] == 1 and [b[1] for b in once["buckets"]] == [1, 2, 3, 4] and once["state"][0][3] == 1
    again = await write(servers_tx, [a])  # a redelivery
    assert again.inserted == [False]
    assert again.outcome.stored == [] and again.outcome.alerts == []
    assert await derived(servers_tx, device) == once


async def test_in_order_readings_derive_buckets_the_gap_between_them_and_the_state(
    servers_tx: asyncpg.Connection
) -> None:
    device = new_device()
    t = now_aligned(step=3600)
    a = reading(device, 1, t, [1, 2, 3, 4], 1000)
    # B's buckets cover [t + 1 h, t + 2 h); its index says 10 more pulses flowed, in the hour nobody covered.
    b = reading(device, 2, t + 2 * 3600, [1, 1, 1, 1], 1000 + 10 + 4)
    outcome = (await write(servers_tx, [a, b])).outcome
    assert outcome.stored == [a, b] and outcome.gaps == 1 and outcome.resets == 0
    got = await derived(servers_tx, device)
    assert [g[5:] for g in got["gaps"]] == [(10, "gap")]
    assert got["gaps"][0][3].timestamp() == t and got["gaps"][0][4].timestamp() == t + 3600
    assert got["state"][0][1:4] == (2, 1014, 2)
    # Every pulse is in the hourly totals: A's buckets, the gap, B's buckets.
    assert sum(pulses for _, pulses in got["hourly"]) == 10 + 10 + 4


async def test_an_index_that_goes_back_is_a_reset_not_volume(servers_tx: asyncpg.Connection) -> None:
    device = new_device()
    t = now_aligned()
    before, after = reading(device, 1, t, [5], 900_000), reading(device, 2, t + WIDTH, [3], 3)
    outcome = (await write(servers_tx, [before, after])).outcome
    assert outcome.resets == 1
    got = await derived(servers_tx, device)
    assert [r[1:] for r in got["resets"]] == [(2, 900_000, 3)] and got["gaps"] == []


async def test_a_late_reading_splits_the_gap_and_leaves_the_last_reading(servers_tx: asyncpg.Connection) -> None:
    device = new_device()
    t = now_aligned(step=3600)
    a = reading(device, 1, t, [1], 100)
    b = reading(device, 2, t + 2 * WIDTH, [2], 100 + 5 + 2)  # 5 pulses in the slot before it
    c = reading(device, 3, t + 4 * WIDTH, [3], 107 + 7 + 3)  # 7 in the slot before it
    await write(servers_tx, [a])
    await write(servers_tx, [c])
    assert [g[5] for g in (await derived(servers_tx, device))["gaps"]] == [5 + 2 + 7]  # a to c, b's volume included
    late = await write(servers_tx, [b])
    assert late.outcome.stored == [b]
    got = await derived(servers_tx, device)
    assert [(g[1], g[2], g[5]) for g in got["gaps"]] == [(1, 2, 5), (2, 3, 7)]
    assert got["state"][0][1:4] == (3, 117, 3)  # c is still the last; b was counted


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[int, list[int], int]]:
    """One device's readings as (period end slot, counts, index): overlaps, gaps, adjustments and resets."""
    slot, index, history = 0, draw(st.integers(0, WRAP - 1)), []
    for _ in range(draw(st.integers(1, 7))):
        slot += draw(st.integers(1, 6))
        counts = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4))
        extra = draw(st.integers(-3, 6) | st.just(-500_000))  # -500,000: the meter was reset
        index = (index + sum(counts) + extra) % WRAP
        history.append((slot, counts, index))
    return history


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(history=histories(), seed=st.randoms(use_true_random=False))
async def test_arrival_order_batching_and_repeats_do_not_change_what_is_derived(
    servers_tx: asyncpg.Connection, history: list[tuple[int, list[int], int]], seed: random.Random
) -> None:
    device = new_device()
    base = now_aligned(step=86_400, back=3 * 86_400)
    readings = [reading(device, seq, base + slot * WIDTH, counts, index)
                for seq, (slot, counts, index) in enumerate(history, start=1)]
    arrival = readings + seed.sample(readings, seed.randint(0, len(readings)))
    seed.shuffle(arrival)
    batches, at = [], 0
    while at < len(arrival):
        size = seed.randint(1, 3)
        batches.append(arrival[at:at + size])
        at += size

    answers = []
    for batched in ([readings], batches):  # in order and at once, then as they arrived
        savepoint = servers_tx.transaction()
        await savepoint.start()
        for batch in batched:
            await write(servers_tx, batch)
        answers.append(await derived(servers_tx, device))
        await savepoint.rollback()
    assert answers[1] == answers[0]
    assert answers[0]["raw"] == len(readings) and answers[0]["state"][0][3] == len(readings)


async def test_a_reading_the_database_rejects_fails_alone(servers: LocalStack) -> None:
    device = new_device()
    t = now_aligned()
    good = reading(device, 1, t, [1], 10)
    bad = reading(device, 2, t + WIDTH, [2**31], 20)  # not an int4: PostgreSQL refuses the row (SQLSTATE 22003)
    pool = await asyncpg.create_pool(servers.database_url, min_size=1, max_size=1)
    try:
        await device_rows(pool, [good])
        written, rejected = await write_isolating(pool, [good, bad], STAGE.write)
        async with pool.acquire() as conn:
            stored = await conn.fetchval(READINGS_OF, "nbiot", device)
    finally:
        await forget_devices(pool, [good])
        await pool.close()
    assert [items for items, _ in written] == [[good]] and stored == 1
    assert [(r, error.split(":")[0]) for r, error in rejected] == [(bad, "NumericValueOutOfRangeError")]


async def test_two_replicas_storing_one_reading_at_once_store_it_once(servers: LocalStack) -> None:
    """A redelivery reaching a second replica while the first still holds the reading: the second waits for
    the first's device lock, then finds the reading stored. (Inserted without ON CONFLICT, a writer that did
    not wait would fail on the key instead, and its whole batch with it.)"""
    device = new_device()
    r = reading(device, 1, now_aligned(), [1, 2], 10)
    first, second = [await asyncpg.connect(servers.database_url) for _ in range(2)]
    try:
        await device_rows(first, [r])
        holding = first.transaction()
        await holding.start()
        assert (await STAGE.write(first, [r])).inserted == [True]
        waiting = asyncio.create_task(write(second, [r]))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # queued behind the first replica's device lock
        await holding.commit()
        assert (await asyncio.wait_for(waiting, 10)).inserted == [False]
        assert await first.fetchval(READINGS_OF, "nbiot", device) == 1
    finally:
        await forget_devices(first, [r])
        await first.close()
        await second.close()


async def test_a_reading_of_a_device_without_a_registry_row_is_quarantined_not_lost(
    servers: LocalStack, servers_nc: NATS
) -> None:
    """Ingest accepted it, then the device was deleted before the store stage got to it: no device id to store
    it under. It goes to quarantine, saying why (register the device again, then replay the quarantine); the
    rest of its batch is stored."""
    device, deleted = new_device(), new_device()
    t = now_aligned()
    good, orphan = reading(device, 1, t, [1], 10), reading(deleted, 1, t, [1], 10)
    publisher = Publisher(servers_nc)
    await publisher.start()
    pool = await asyncpg.create_pool(servers.database_url, min_size=1, max_size=1)
    stage = RawStage(pool, publisher, Quarantine(publisher))
    stage.name = f"unit-{uuid.uuid4().hex[:10]}"
    try:
        await device_rows(pool, [good])
        assert await stage.process([as_message(servers_nc, encode_raw([good, orphan]))]) == [None]
        assert await pool.fetchval(READINGS_OF, "nbiot", device) == 1
        records = await quarantined(servers_nc, stage.name)
        assert [(q.reason, q.reading) for q in records] == [("database", orphan)]
        assert records[0].detail == (f"UnknownDevice: no registered device nbiot:{deleted}"
                                     " (removed after ingest accepted the reading?)")
    finally:
        await forget_devices(pool, [good])
        await publisher.stop()
        await pool.close()


async def test_readings_have_one_index_their_primary_key(servers_tx: asyncpg.Connection) -> None:
    """Every index on the table of readings is written by every reading (docs/storage-model.md): one, the
    primary key that is both a reading's identity and its device's history order."""
    indexes = await servers_tx.fetch(
        "SELECT c.relname AS tbl, i.indexrelid::regclass::text AS index, i.indisprimary FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indrelid"
        " WHERE c.oid = 'readings'::regclass OR c.oid IN (SELECT inhrelid FROM pg_inherits"
        "                                                 WHERE inhparent = 'readings'::regclass)")
    by_table: dict[str, list[bool]] = {}
    for row in indexes:
        by_table.setdefault(row["tbl"], []).append(row["indisprimary"])
    assert by_table["readings"] == [True] and all(kinds == [True] for kinds in by_table.values()), indexes
    key = await servers_tx.fetchval("SELECT pg_get_indexdef('readings_pkey'::regclass)")
    assert key.endswith("(device_hour, device, device_time, seq)"), key


def as_message(nc: NATS, data: bytes) -> Msg:
    return Msg(_client=nc, subject="raw.unit", data=data)


async def test_what_cannot_be_stored_is_quarantined_and_the_rest_of_the_batch_is_stored(
    servers: LocalStack, servers_nc: NATS
) -> None:
    device = new_device()
    t = now_aligned()
    good, other = reading(device, 1, t, [1], 10), reading(device, 3, t + WIDTH, [1], 11)
    misaligned = msgspec.structs.replace(reading(device, 2, t, [1], 10), bucket_seconds=7)
    publisher = Publisher(servers_nc)
    await publisher.start()
    pool = await asyncpg.create_pool(servers.database_url, min_size=1, max_size=1)
    stage = RawStage(pool, publisher, Quarantine(publisher))
    stage.name = f"unit-{uuid.uuid4().hex[:10]}"  # its quarantine records are this test's alone
    try:
        await device_rows(pool, [good])
        errors = await stage.process([as_message(servers_nc, b"\x93not an envelope"),
                                      as_message(servers_nc, encode_raw([good, misaligned])),
                                      as_message(servers_nc, encode_raw([other]))])
        assert errors == [None, None, None]  # each answered: stored or kept in quarantine
        stored = await pool.fetch("SELECT seq FROM readings WHERE device = (SELECT id FROM devices"
                                  " WHERE protocol = 'nbiot' AND device_id = $1) ORDER BY seq", device)
        assert [r["seq"] for r in stored] == [1, 3]
        records = await quarantined(servers_nc, stage.name)
        assert [(q.reason, q.reading) for q in records] == [("envelope", None), ("invariant", misaligned)]
        assert records[0].payload == b"\x93not an envelope" and records[1].detail == "bucket_seconds 7"
        # A quarantine that takes nothing (its rate limit): the message must come back, not be acknowledged.
        refusing = RawStage(pool, publisher, Quarantine(publisher, per_source_rate=0.0, burst=0.0))
        assert await refusing.process([as_message(servers_nc, encode_raw([misaligned]))]) == [
            "invalid reading not quarantined: bucket_seconds 7"]
    finally:
        await forget_devices(pool, [good])
        await publisher.stop()
        await pool.close()


async def quarantined(nc: NATS, stage: str) -> list[QuarantineRecord]:
    sub = await nc.jetstream().pull_subscribe(f"quarantine.{stage}", stream=QUARANTINE)
    try:
        return [decode_record(m.data) for m in await sub.fetch(10, timeout=1)]
    finally:
        await sub.unsubscribe()
