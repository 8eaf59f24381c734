"""Where alerts open and close, alone (pulsestack/alerts/): the rules a device's state implies (`rules.judge`,
pure: its clock is the readings' own period ends), the SQL that opens, resolves and judges daily totals
(`changes`) and the sweep's silence and day end (`sweep`), each
on one PostgreSQL connection in a transaction that is rolled back: its `now()` stands still for the test, a
fake clock the rows are placed against. And readings stored through the store stage's write in one batch, in
random batches or one by one leave the same alerts. No service runs."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from processors.raw_stage import RawStage
from pulsestack.alerts import rules
from pulsestack.alerts.changes import AlertChanges
from pulsestack.alerts.rules import FINEST_FOR_LEAK, FLAG_ALERTS, LEAK_WINDOW
from pulsestack.alerts.sweep import Sweeper
from pulsestack.store.pulses import Point, _DeviceState
from pulsestack.wire.reading import Flags, Reading
from tests.helpers import READINGS_OF, now_aligned, unique_number

DEVICE = ("nbiot", "1")
PERIOD_END = 1_800_000_000  # the reading's period end: the rules' only clock
OPENABLE = ("silent", "leak", *(kind for kind, _ in FLAG_ALERTS))


def state(*, open_alerts: frozenset[str] = frozenset(), flags: int | None = 0, finest: int | None = 900,
          flowing: int | None = 0) -> tuple[_DeviceState, Reading]:
    """A device whose reading just stored ends at PERIOD_END with `flags` (None: it came late, with every
    flag), and whose meter has shown flow, without an hour of none, for `flowing` seconds before it (None: never
    read)."""
    r = Reading(*DEVICE, 7, PERIOD_END, PERIOD_END, 900, [1], 10, 3600, 15 if flags is None else flags, PERIOD_END,
                "t", b"")
    point = None if flowing is None else Point(PERIOD_END, PERIOD_END, 7, 10, 900, (1,))
    since = None if flowing is None else PERIOD_END - flowing
    return _DeviceState(point, 1, finest=finest, last_zero_flow=since, open_alerts=open_alerts,
                        last=None if flags is None else r), r


def judge(s: tuple[_DeviceState, Reading], replay: bool = False) -> AlertChanges:
    changes = AlertChanges()
    rules.judge(*s, changes, replay)
    return changes


def judged(s: tuple[_DeviceState, Reading], replay: bool = False) -> tuple[set[str], set[str]]:
    """(kinds opened, kinds resolved)."""
    changes = judge(s, replay)
    return {k[2] for k, _, _ in changes.episodes}, {k[2] for k in changes.to_resolve}


open_sets = st.frozensets(st.sampled_from(OPENABLE))
flag_values = st.integers(0, 15) | st.none()


@given(open_alerts=open_sets, flags=flag_values, finest=st.sampled_from([None, 60, 900, 3600, 7200]),
       flowing=st.integers(0, 3 * LEAK_WINDOW) | st.none(), replay=st.booleans())
def test_only_changes_are_asked_for(open_alerts: frozenset[str], flags: int | None, finest: int | None,
                                    flowing: int | None, replay: bool) -> None:
    s = state(open_alerts=open_alerts, flags=flags, finest=finest, flowing=flowing)
    opened, resolved = judged(s, replay)
    assert not opened & open_alerts and resolved <= open_alerts
    assert s[0].open_alerts == (open_alerts | opened) - resolved  # what the batch's next reading finds open


@given(open_alerts=open_sets, flags=flag_values)
def test_a_flag_alert_is_open_exactly_while_the_last_reading_carries_its_flag(
    open_alerts: frozenset[str], flags: int | None
) -> None:
    opened, resolved = judged(state(open_alerts=open_alerts, flags=flags))
    after = (open_alerts | opened) - resolved
    for kind, flag in FLAG_ALERTS:
        if flags is None:  # a late reading: the last reading, and what it says, did not change
            assert (kind in after) == (kind in open_alerts)
        else:
            assert (kind in after) == bool(flags & flag), kind


def test_a_flag_alert_carries_the_readings_that_raised_and_cleared_it() -> None:
    by = {"seq": 7, "device_time": dt.datetime.fromtimestamp(PERIOD_END, dt.UTC).isoformat()}
    assert judge(state(flags=Flags.TAMPER)).episodes == [((*DEVICE, "tamper"), by, None)]
    assert judge(state(open_alerts=frozenset({"tamper"}))).to_resolve == {(*DEVICE, "tamper"): {"resolved_by": by}}


@given(replay=st.booleans(), flags=flag_values)
def test_a_reading_ends_a_silence_unless_it_is_replayed(replay: bool, flags: int | None) -> None:
    _, resolved = judged(state(open_alerts=frozenset({"silent"}), flags=flags), replay)
    assert ("silent" in resolved) == (not replay)


@given(flowing=st.integers(0, 3 * LEAK_WINDOW), was_open=st.booleans(),
       finest=st.sampled_from([60, 300, 900, 1800, 3600]))
@example(flowing=LEAK_WINDOW, was_open=False, finest=FINEST_FOR_LEAK)
@example(flowing=LEAK_WINDOW - 1, was_open=True, finest=FINEST_FOR_LEAK)
def test_a_leak_is_open_exactly_while_flow_has_lasted_a_day(flowing: int, was_open: bool, finest: int) -> None:
    opened, resolved = judged(state(open_alerts=frozenset({"leak"} if was_open else ()), finest=finest,
                                    flowing=flowing))
    assert (("leak" in opened) or (was_open and "leak" not in resolved)) == (flowing >= LEAK_WINDOW)


def test_the_day_a_leak_starts_is_exact_to_the_second() -> None:
    assert "leak" not in judged(state(flowing=LEAK_WINDOW - 1))[0]
    since = dt.datetime.fromtimestamp(PERIOD_END - LEAK_WINDOW, dt.UTC).isoformat()
    assert judge(state(flowing=LEAK_WINDOW)).episodes == [
        ((*DEVICE, "leak"), {"flowing_since": since, "hours": 24, "seq": 7,
                             "device_time": dt.datetime.fromtimestamp(PERIOD_END, dt.UTC).isoformat()}, None)]


@given(flowing=st.integers(0, 3 * LEAK_WINDOW), was_open=st.booleans())
def test_buckets_wider_than_an_hour_never_judge_a_leak(flowing: int, was_open: bool) -> None:
    s = state(open_alerts=frozenset({"leak"} if was_open else ()), finest=FINEST_FOR_LEAK * 2, flowing=flowing)
    opened, resolved = judged(s)
    assert "leak" not in opened | resolved


def test_what_opens_and_resolves_in_one_transaction_stays_an_episode_of_its_own() -> None:
    changes = AlertChanges()
    changes.resolve(*DEVICE, "leak", resolved_by=1)  # open before the transaction
    changes.open(*DEVICE, "leak", hours=24)
    changes.resolve(*DEVICE, "leak", resolved_by=3)
    changes.open(*DEVICE, "leak", hours=25)
    assert changes.to_resolve == {(*DEVICE, "leak"): {"resolved_by": 1}}
    assert changes.episodes == [((*DEVICE, "leak"), {"hours": 24}, {"resolved_by": 3}),
                                ((*DEVICE, "leak"), {"hours": 25}, None)]


# ------------------------------------------------------------------ the SQL, on one connection


async def device(conn: asyncpg.Connection, settings: dict[str, Any] | None = None, registered_ago: float = 0.0,
                 disabled: bool = False) -> str:
    """A registered NB-IoT device, registered `registered_ago` seconds before the transaction's now()."""
    number = unique_number(356_938_900_000_000)
    await conn.execute(
        "INSERT INTO devices (protocol, device_id, shard, settings, disabled, created_at)"
        " VALUES ('nbiot', $1, $2, $3::jsonb, $4, now() - make_interval(secs => $5))",
        str(number), number % 1024, orjson.dumps(settings or {}).decode(), disabled, registered_ago)
    return str(number)


async def open_kinds(conn: asyncpg.Connection, device_id: str) -> list[str]:
    return [r["kind"] for r in await conn.fetch(
        "SELECT kind FROM alerts WHERE device_id = $1 AND resolved_at IS NULL ORDER BY kind", device_id)]


async def apply(conn: asyncpg.Connection, changes: AlertChanges) -> list[int]:
    async with conn.transaction():
        return await changes.apply(conn)


async def test_an_alert_opens_once_and_resolves_once(servers_tx: asyncpg.Connection) -> None:
    d = await device(servers_tx)
    first = AlertChanges()
    first.open("nbiot", d, "tamper", seq=1)
    opened = await apply(servers_tx, first)
    again = AlertChanges()
    again.open("nbiot", d, "tamper", seq=2)
    assert len(opened) == 1 and await apply(servers_tx, again) == []  # one open alert per device and kind
    resolve = AlertChanges()
    resolve.resolve("nbiot", d, "tamper")
    assert await apply(servers_tx, resolve) == opened and await open_kinds(servers_tx, d) == []
    resolve_again = AlertChanges()
    resolve_again.resolve("nbiot", d, "tamper")
    assert await apply(servers_tx, resolve_again) == []


async def threshold(conn: asyncpg.Connection, d: str, day: dt.date, pulses: int) -> list[int]:
    changes = AlertChanges()
    changes.day_total("nbiot", d, day, pulses)
    return await apply(conn, changes)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pulses=st.integers(0, 200))
@pytest.mark.parametrize("weight", [None, 2, 0.5])
async def test_a_day_over_its_limit_opens_one_threshold_alert(servers_tx: asyncpg.Connection, weight: float | None,
                                                              pulses: int) -> None:
    settings: dict[str, Any] = {"daily_limit": 100} | ({"pulse_weight": weight} if weight is not None else {})
    example = servers_tx.transaction()  # each example's rows are its own
    await example.start()
    try:
        d = await device(servers_tx, settings)
        day = dt.date(2026, 3, 1)
        over = pulses * (weight or 1) >= 100
        opened = await threshold(servers_tx, d, day, pulses)
        assert len(opened) == int(over)
        if over:
            assert await threshold(servers_tx, d, day, pulses + 50) == []  # once per day
            detail = orjson.loads(await servers_tx.fetchval("SELECT detail FROM alerts WHERE id = $1", opened[0]))
            assert detail["pulses"] == pulses and float(detail["limit"]) == 100
    finally:
        await example.rollback()


async def test_the_next_days_total_over_the_limit_is_stored_while_the_last_days_alert_is_open(
    servers_tx: asyncpg.Connection
) -> None:
    # One open alert per device and kind: the next day's threshold alert waits for the sweep to end the last
    # day's, and opens with that day's next reading. Before, its INSERT failed on the unique index, which
    # failed the reading's write (SQLSTATE 23505, taken for bad data: the reading was quarantined).
    d = await device(servers_tx, {"daily_limit": 10})
    midnight = now_aligned(step=86_400, back=5 * 86_400)
    stage = RawStage(None, None, None)  # type: ignore[arg-type]

    async def store(seq: int, period_end: int, index: int) -> list[int]:
        # A bucket without flow in each: no leak, whatever the hours between them.
        r = Reading("nbiot", d, seq, period_end, period_end, 900, [0, 20], index, 3600, 0, period_end, "t", b"")
        async with servers_tx.transaction():
            return (await stage.write(servers_tx, [r])).outcome.alerts

    assert len(await store(1, midnight + 3600, 20)) == 1
    assert await store(2, midnight + 86_400 + 3600, 40) == []
    day = dt.datetime.fromtimestamp(midnight, dt.UTC).date()

    async def open_thresholds() -> list[dt.date]:
        return [r["day"] for r in await servers_tx.fetch(
            "SELECT day FROM alerts WHERE device_id = $1 AND kind = 'threshold' AND resolved_at IS NULL", d)]

    assert await open_thresholds() == [day]
    assert await servers_tx.fetchval(READINGS_OF, "nbiot", d) == 2
    await Sweeper(OneConnection(servers_tx), 600).sweep()  # type: ignore[arg-type]
    assert await open_thresholds() == []
    await store(3, midnight + 86_400 + 4500, 60)
    assert await open_thresholds() == [day + dt.timedelta(days=1)]


async def test_without_a_limit_no_total_opens_a_threshold_alert(servers_tx: asyncpg.Connection) -> None:
    d = await device(servers_tx)
    assert await threshold(servers_tx, d, dt.date(2026, 3, 1), 10**9) == []


# The rule as docs/speed-layer.md states it, not the sweep's constant: a device is silent after 3 intervals.
SILENT_AFTER = 3


class OneConnection:
    """The pool a Sweeper asks for, lending it the test's connection (its transaction is the test's)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        yield self._conn


async def last_seen(conn: asyncpg.Connection, d: str, ago: float, interval: int | None) -> None:
    await conn.execute(
        "INSERT INTO device_state (protocol, device_id, last_period_end, last_device_time, last_seq, last_index,"
        " last_battery_mv, last_flags, last_seen, interval_seconds)"
        " VALUES ('nbiot', $1, now(), now(), 1, 0, 3600, 0, now() - make_interval(secs => $2), $3)",
        d, ago, interval)


async def test_a_device_silent_for_three_of_its_intervals_gets_a_silent_alert(servers_tx: asyncpg.Connection) -> None:
    default = 600
    silent = SILENT_AFTER * 300
    cases = {  # (seconds since last heard, its learnt interval): silent?
        (silent + 1, 300): True, (silent - 1, 300): False,
        (SILENT_AFTER * default + 1, None): True, (SILENT_AFTER * default - 1, None): False,
    }
    devices = {}
    for (ago, interval), _ in cases.items():
        d = await device(servers_tx, registered_ago=10 * default)
        await last_seen(servers_tx, d, ago, interval)
        devices[(ago, interval)] = d
    disabled = await device(servers_tx, registered_ago=10 * default, disabled=True)
    await last_seen(servers_tx, disabled, 10 * default, 300)
    await Sweeper(OneConnection(servers_tx), default).sweep()  # type: ignore[arg-type]
    assert {key: await open_kinds(servers_tx, d) == ["silent"] for key, d in devices.items()} == cases
    assert await open_kinds(servers_tx, disabled) == []


async def test_a_device_never_heard_from_is_silent_three_default_intervals_after_registering(
    servers_tx: asyncpg.Connection
) -> None:
    default = 600
    late = await device(servers_tx, registered_ago=SILENT_AFTER * default + 1)
    early = await device(servers_tx, registered_ago=SILENT_AFTER * default - 1)
    off = await device(servers_tx, registered_ago=10 * default, disabled=True)
    sweeper = Sweeper(OneConnection(servers_tx), default)  # type: ignore[arg-type]
    await sweeper.sweep()
    assert [await open_kinds(servers_tx, d) for d in (late, early, off)] == [["silent"], [], []]
    detail = orjson.loads(await servers_tx.fetchval("SELECT detail FROM alerts WHERE device_id = $1", late))
    assert detail["last_seen"] is None and detail["registered"]


async def test_device_settings_default_to_utc_days_and_a_pulse_weight_of_one(servers_tx: asyncpg.Connection) -> None:
    """Migration 011's functions, which every day boundary and volume reads (rollups, thresholds, the sweep's day
    end, the API): the defaults of docs/speed-layer.md, for a device without settings or not registered."""
    for chosen_settings in (None, {}, {"daily_limit": 5}):
        given_json = None if chosen_settings is None else orjson.dumps(chosen_settings).decode()
        assert await servers_tx.fetchrow("SELECT device_time_zone($1::jsonb), device_pulse_weight($1::jsonb)",
                                         given_json) == ("UTC", 1)
    chosen = orjson.dumps({"timezone": "Asia/Kolkata", "pulse_weight": 2.5}).decode()
    assert await servers_tx.fetchrow("SELECT device_time_zone($1::jsonb), device_pulse_weight($1::jsonb)",
                                     chosen) == ("Asia/Kolkata", 2.5)


async def test_a_threshold_alert_ends_with_its_device_local_day(servers_tx: asyncpg.Connection) -> None:
    # Devices whose local date, at the transaction's now(), is known: UTC, and zones half a day either side.
    ended = {}
    for zone in ("UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"):
        today = await servers_tx.fetchval("SELECT (now() AT TIME ZONE $1)::date", zone)
        for day in (today, today - dt.timedelta(days=1)):
            d = await device(servers_tx, {"daily_limit": 1, "timezone": zone})
            assert len(await threshold(servers_tx, d, day, 5)) == 1
            ended[d] = day < today
    await Sweeper(OneConnection(servers_tx), 600).sweep()  # type: ignore[arg-type]
    assert {d: await open_kinds(servers_tx, d) == [] for d in ended} == ended


# ------------------------------------------------------------------ the record does not depend on the batches


HOUR = 3600
# Per device: its alerts when the first reading arrives (silent or not), its daily limit, and its readings in
# period order as (hours since the last, counts of its four quarter-hours, flags, pulses no bucket shows).
readings_of_a_device = st.tuples(
    st.booleans(), st.sampled_from([None, 40, 90]),
    st.lists(st.tuples(st.sampled_from([1, 5, 9, 13]), st.lists(st.integers(0, 7), min_size=4,
                                                                 max_size=4),
                       st.sampled_from([0, 0, *map(int, (Flags.BATTERY_LOW, Flags.TAMPER,
                                                         Flags.TAMPER | Flags.REVERSE_FLOW))]),
                       st.integers(0, 3)), min_size=1, max_size=10),
)


@settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fleet=st.lists(readings_of_a_device, min_size=1, max_size=3), data=st.data())
async def test_the_alerts_table_is_the_same_whatever_the_batches(servers_tx: asyncpg.Connection, fleet: list[Any],
                                                                 data: st.DataObject) -> None:
    """Readings stored in one batch, in random batches, or one by one, through the store stage's write, leave
    the same alerts: which, for which reading opened and which resolved each (threshold alerts: which day)."""
    example = servers_tx.transaction()
    await example.start()
    try:
        t0 = now_aligned(86_400, back=10 * 86_400)
        readings: list[Reading] = []
        for silent, limit, history in fleet:
            d = await device(servers_tx, {"daily_limit": limit} if limit else None)
            if silent:
                await servers_tx.execute(
                    "INSERT INTO alerts (protocol, device_id, kind) VALUES ('nbiot', $1, 'silent')", d)
            end, index = t0, 0
            for k, (hours, counts, flags, unseen) in enumerate(history):
                end, index = end + hours * HOUR, index + sum(counts) + unseen
                readings.append(Reading("nbiot", d, k + 1, end, end, 900, counts, index, 3600, flags, end, "t", b""))
        # Mostly in order, a few readings late, devices interleaved, some delivered twice.
        late = data.draw(st.booleans())
        delays = data.draw(st.lists(st.integers(0, 2 if late else 0), min_size=len(readings), max_size=len(readings)))
        arrival = [r for _, r in sorted(enumerate(readings), key=lambda p: (p[1].period_end + delays[p[0]] * 10 * HOUR,
                                                                           p[0]))]
        arrival += data.draw(st.lists(st.sampled_from(readings), max_size=2))
        cuts = data.draw(st.lists(st.booleans(), min_size=len(arrival) - 1, max_size=len(arrival) - 1))
        splits = {
            "one batch": [arrival],
            "random batches": _split(arrival, cuts),
            "one by one": [[r] for r in arrival],
        }
        devices = sorted({r.device for r in readings})
        records = {name: await _alerts_after(servers_tx, devices, batches) for name, batches in splits.items()}
        if any(delays):
            # A threshold alert is judged on the day totals a transaction leaves: with a reading late, which day
            # opens first (one open alert per kind) depends on the batches (docs/speed-layer.md).
            records = {name: [rec for rec in record if rec[1] != "threshold"] for name, record in records.items()}
        assert records["random batches"] == records["one batch"] and records["one by one"] == records["one batch"]
        for kind in sorted({(rec[1], rec[3]) for rec in records["one batch"]}):
            event(f"{kind[0]} {'resolved' if kind[1] else 'open'}")  # what was covered: --hypothesis-show-statistics
    finally:
        await example.rollback()


def _split(readings: list[Reading], cuts: list[bool]) -> list[list[Reading]]:
    batches = [[readings[0]]]
    for r, cut in zip(readings[1:], cuts, strict=True):
        if cut:
            batches.append([])
        batches[-1].append(r)
    return batches


async def _alerts_after(conn: asyncpg.Connection, devices: list[str], batches: list[list[Reading]]) -> list[Any]:
    """The devices' alerts once the batches are stored, each batch in its transaction; then rolled back. The
    reading an alert names must be one of its device's stored readings."""
    run = conn.transaction()
    await run.start()
    try:
        stage = RawStage(None, None, None)  # type: ignore[arg-type]
        for batch in batches:
            async with conn.transaction():
                await stage.write(conn, batch)
        stored = {(r["device_id"], r["seq"], r["device_time"].isoformat()) for r in await conn.fetch(
            "SELECT d.device_id, r.seq, r.device_time FROM readings r JOIN devices d ON d.id = r.device"
            " WHERE d.protocol = 'nbiot' AND d.device_id = ANY($1)", devices)}
        record = []
        for row in await conn.fetch(
            "SELECT device_id, kind, day, resolved_at IS NOT NULL AS resolved, detail FROM alerts"
            " WHERE protocol = 'nbiot' AND device_id = ANY($1) ORDER BY device_id, kind, id", devices,
        ):
            detail = orjson.loads(row["detail"])
            if row["kind"] == "threshold":
                # Its total is the day's when the alert was judged: a batch sees more of the day.
                detail = {}
            for reading in (detail, detail.get("resolved_by")):
                if reading and "device_time" in reading:  # a silent alert opens with none
                    assert (row["device_id"], reading["seq"], reading["device_time"]) in stored
            record.append((row["device_id"], row["kind"], row["day"], row["resolved"], detail))
        return record
    finally:
        await run.rollback()
