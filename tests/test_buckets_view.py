"""The `buckets` view (migration 009) answers every bucket as `pulsestack.store.pulses.bucket_winners` does:
the SQL the API and the dashboards read and the rule the write path derives rollups with are one rule. Each
codec's period end (NB-IoT: the device time; Sigfox, LoRaWAN: rounded down to the quarter hour) is exercised,
with contested buckets of several widths and device times off the quarter hour."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulsestack.store.pulses import MAX_SPAN, Point, bucket_winners
from pulsestack.store.timeconv import epoch, ts
from pulsestack.wire.codecs import CODECS, codec_of
from pulsestack.wire.reading import ALLOWED_BUCKET_SECONDS

T0 = 1_780_000_200  # a quarter hour
STORED = st.tuples(
    st.integers(0, 3 * 3600),  # device time after T0
    st.integers(1, 3),  # seq
    st.sampled_from(sorted(s for s in ALLOWED_BUCKET_SECONDS if s <= 1800)),
    st.lists(st.integers(0, 50), min_size=0, max_size=6),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(protocol=st.sampled_from(sorted(CODECS)), stored=st.lists(STORED, max_size=12))
async def test_the_view_is_the_python_rule(
    servers_tx: asyncpg.Connection, protocol: str, stored: list[tuple[int, int, int, list[int]]]
) -> None:
    conn = servers_tx  # rolled back after the test; each example has a device of its own
    device = f"view-{uuid.uuid4().hex}"
    number = await conn.fetchval(
        "INSERT INTO devices (protocol, device_id, shard) VALUES ($1, $2, 0) RETURNING id", protocol, device)
    unique = {(T0 + offset, seq): (width, counts) for offset, seq, width, counts in stored}
    await conn.executemany(
        "INSERT INTO readings (device, bucket_seconds, device_time, seq, meter_index, received_at, counts,"
        " payload) VALUES ($1, $2, $3, $4, 0, now(), $5, '')",
        [(number, width, ts(t), seq, counts) for (t, seq), (width, counts) in unique.items()],
    )
    period_end = codec_of(protocol).period_end
    expected = bucket_winners(
        Point(period_end(t), t, seq, 0, width, tuple(counts)) for (t, seq), (width, counts) in unique.items())
    rows = await conn.fetch(
        "SELECT bucket_start, bucket_seconds, count, device_time, seq FROM buckets"
        " WHERE protocol = $1 AND device_id = $2", protocol, device)
    assert {(epoch(r["bucket_start"]), r["bucket_seconds"]): ((epoch(r["device_time"]), r["seq"]), r["count"])
            for r in rows} == expected
    assert len(rows) == len(expected)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=st.lists(STORED, max_size=10), lo=st.integers(-3600, 4 * 3600), hours=st.integers(0, 4))
async def test_a_range_answers_as_the_view_does_over_it(
    servers_tx: asyncpg.Connection, stored: list[tuple[int, int, int, list[int]]], lo: int, hours: int
) -> None:
    """`buckets_between` and `consumption_hourly_between` (migrations 009, 010) bound the readings they read by device
    time; what they answer for a range is what the views answer filtered to it. Hours as the API asks them:
    the range's last hour whole (its buckets may start after the range's end)."""
    conn = servers_tx
    device = f"range-{uuid.uuid4().hex}"
    number = await conn.fetchval(
        "INSERT INTO devices (protocol, device_id, shard) VALUES ('sigfox', $1, 0) RETURNING id", device)
    unique = {(T0 + offset, seq): (width, counts) for offset, seq, width, counts in stored}
    await conn.executemany(
        "INSERT INTO readings (device, bucket_seconds, device_time, seq, meter_index, received_at, counts,"
        " payload) VALUES ($1, $2, $3, $4, 0, now(), $5, '')",
        [(number, width, ts(t), seq, counts) for (t, seq), (width, counts) in unique.items()],
    )
    start, end = ts(T0 + lo), ts(T0 + lo + hours * 3600)
    hourly = "consumption_hourly_between($3, $4::timestamptz + interval '1 hour')"
    for ranged, whole, column in (("buckets_between($3, $4)", "buckets", "bucket_start"),
                                  (hourly, "consumption_hourly", "hour")):
        query = ("SELECT * FROM {} WHERE protocol = 'sigfox' AND device_id = $1 AND {} >= $3 AND {} < $4"
                 " AND $2::int IS NOT NULL ORDER BY 3, 4")
        assert [tuple(r) for r in await conn.fetch(query.format(ranged, column, column), device, 0, start, end)] \
            == [tuple(r) for r in await conn.fetch(query.format(whole, column, column), device, 0, start, end)]


async def test_a_range_reads_only_the_partitions_that_can_cover_it(servers_tx: asyncpg.Connection) -> None:
    """The fleet dashboard's and the export's ranges prune readings' monthly partitions (the views alone read
    every reading ever stored)."""
    months = [r["name"] for r in await servers_tx.fetch(
        "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'readings'::regclass AND c.relname <> 'readings_default' ORDER BY 1")]
    assert len(months) >= 3, months
    year, month = int(months[1][len("readings_y"):][:4]), int(months[1][-2:])
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    plan = "\n".join(r[0] for r in await servers_tx.fetch(
        "EXPLAIN SELECT * FROM consumption_hourly_between($1, $2)", start, start + dt.timedelta(hours=6)))
    assert months[1] in plan and not {m for m in months if m != months[1]} & set(plan.split()), plan
    assert "readings_default" not in plan, plan
    whole = "\n".join(r[0] for r in await servers_tx.fetch(
        "EXPLAIN SELECT * FROM consumption_hourly WHERE hour >= $1 AND hour < $2",
        start, start + dt.timedelta(hours=6)))
    assert all(m in whole for m in months), whole  # what the ranged function saves


async def test_the_ranges_bound_readings_by_the_rule_s_max_span(servers_tx: asyncpg.Connection) -> None:
    """SQL cannot import pulses.MAX_SPAN, so migration 009 writes it out: a wider reading than it allows would
    fall out of every range (and the write path's covering lookup) without this check."""
    body = await servers_tx.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'buckets_between'")
    assert f"interval '{MAX_SPAN} seconds'" in body, body


async def test_a_devices_range_is_searched_by_the_hours_of_the_range(servers_tx: asyncpg.Connection) -> None:
    """The readings' key leads with the hour (migration 012): a device's range reaches the key through bounds on
    device_hour, one search per hour of it; without them, every hour of every partition would be searched."""
    await servers_tx.execute("SET LOCAL enable_seqscan = off")  # the test's few readings would be read whole
    start = dt.datetime(2026, 1, 30, 4, tzinfo=dt.UTC)
    plan = "\n".join(r[0] for r in await servers_tx.fetch(
        "EXPLAIN SELECT * FROM buckets_between($1, $2) WHERE protocol = 'nbiot' AND device_id = '1'",
        start, start + dt.timedelta(hours=6)))
    assert re.search(r"Index Cond: \(\(device_hour >= \d+\) AND \(device_hour <= ", plan), plan

