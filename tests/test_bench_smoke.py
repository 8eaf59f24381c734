"""The benchmark's parts at smoke size: profiles, fleets, the fast load generator, delivery verification and
a step's costs per reading.

Asserts exact delivery (every reading sent is stored once, buckets and totals right) and that the costs are
measured (not zero, not nonsense), never speed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from array import array
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from bench import soak
from bench.monitor import ProcessGroups
from bench.run import bulk_register
from bench.soak import SoakSampler, fit, slopes
from bench.steps import Display, StepResult, StepRunner
from pulsestack.bus.topology import REGISTRY_BUCKET, drained
from pulsestack.registry import devices as registry
from pulsestack.registry.membership import members_key, shard_of, unpack
from pulsestack_cli.local import LocalStack
from simulator.batch import ReadingBatch
from simulator.fleet import SentReading, simulated_id, simulated_number
from simulator.generators import GeneratorJob, GeneratorOutcome, run_generators
from simulator.loadgen import Spec
from simulator.plans import HourlyFleet, RampPool
from simulator.profiles import HOUSEHOLD, LEAK, SILENT, WRAP, Profiles
from simulator.verify import verify, verify_batch
from tests.helpers import eventually, register

# Many leaking, silent and wrapping meters, so a small fleet has all of them.
PROFILES = Profiles(leak_share=0.2, silent_share=0.1, wrap_share=0.2)


def _first_id(slot: int) -> int:
    return 50_000_000 + (os.getpid() % 1000) * 20_000 + slot * 5_000


def jobs(stack: LocalStack, batches: list[ReadingBatch]) -> list[GeneratorJob]:
    out = []
    for k, batch in enumerate(batches):
        if batch.protocol == "nbiot":
            spec = Spec(batch="", out="", mode="ack", port=stack.udp_port, master_key=stack.master_key.hex(),
                        sockets=8, ack_timeout=1.0, settle_timeout=60)
        elif batch.protocol == "lorawan":
            spec = Spec(batch="", out="", port=stack.http_port, path="/v1/lorawan", token=stack.route_token("lorawan"),
                        connections=16, settle_timeout=60)
        else:
            spec = Spec(batch="", out="", port=stack.http_port, token=stack.sigfox_token, connections=16,
                        settle_timeout=60)
        out.append(GeneratorJob(f"{batch.protocol}-{k}", batch, spec))
    return out


def test_profiles_are_deterministic_and_have_every_kind() -> None:
    kinds = {PROFILES.kind(356_938_035_600_000 + i) for i in range(500)}
    assert kinds == {HOUSEHOLD, LEAK, SILENT, WRAP}
    number = next(356_938_035_600_000 + i for i in range(500) if PROFILES.kind(356_938_035_600_000 + i) == LEAK)
    night = 1_763_856_000 - 1_763_856_000 % 86_400 + 3 * 3600  # 03:00 UTC
    assert all(c >= PROFILES.leak_pulses[0] for c in PROFILES.counts(number, night))  # a leak never stops
    assert PROFILES.counts(number, night) == Profiles(leak_share=0.2, silent_share=0.1, wrap_share=0.2).counts(
        number, night)
    wrapping = next(356_938_035_600_000 + i for i in range(500) if PROFILES.kind(356_938_035_600_000 + i) == WRAP)
    assert PROFILES.initial_index(wrapping) > 2**32 - 500


def test_hourly_fleet_sends_only_the_meters_due_in_the_window() -> None:
    fleet = HourlyFleet("nbiot", registered=36_000, profiles=PROFILES)
    hour = 1_763_852_400
    batch = fleet.window(hour, 600, 60)
    assert 500 < len(batch) <= 600  # 36,000 / 3600 per second for 60 s, less the silent ones
    assert list(batch.send_at) == sorted(batch.send_at) and 0 <= batch.send_at[0] and batch.send_at[-1] < 60
    assert all(hour + 600 <= batch.period_end[i] + 900 for i in range(len(batch)))
    assert len({batch.number[i] for i in range(len(batch))}) == len(batch)
    assert all(PROFILES.kind(batch.number[i]) != SILENT for i in range(len(batch)))
    again = fleet.window(hour, 600, 60)
    assert again.number == batch.number and again.counts == batch.counts


def test_batches_survive_a_round_trip(tmp_path: Path) -> None:
    pool = RampPool("sigfox", 30, first_id=_first_id(0), profiles=PROFILES)
    batch = pool.step(rate=50, seconds=2)
    batch.save(tmp_path / "b")
    loaded = ReadingBatch.load(tmp_path / "b")
    assert loaded.protocol == "sigfox" and list(loaded.readings()) == list(batch.readings())


def compressed_hour(fleet: HourlyFleet, hour: int) -> ReadingBatch:
    """36 s of the fleet's hour (7,200 meters an hour: about 2 due per second), sent in 3 s."""
    window = fleet.window(hour, 100, 36)
    window.send_at = array("d", (t / 12 for t in window.send_at))
    return window


async def generated(stack: LocalStack, nc: NATS, batches: list[ReadingBatch], workdir: Path) -> list[GeneratorOutcome]:
    """The fast generators' outcomes once the processor has taken everything off the bus."""
    assert all(len(b) > 20 for b in batches)
    outcomes = await run_generators(jobs(stack, batches), workdir)
    await eventually(lambda: drained(nc.jetstream()), timeout=60, interval=0.3)
    return outcomes


async def stored_exactly(conn: asyncpg.Connection, outcomes: list[GeneratorOutcome]) -> None:
    """Every reading of every generator sent, acknowledged and stored once, buckets and totals as sent."""
    for outcome in outcomes:
        assert outcome.result["sent"] == len(outcome.batch)
        assert outcome.acked == len(outcome.batch), outcome.result
        delivery = await verify_batch(conn, outcome.batch, outcome.status)
        assert delivery.complete, (outcome.name, delivery.line(), delivery.total_mismatches[:3])
        assert delivery.delivered == len(outcome.batch)


async def test_fast_generator_and_verification_agree_exactly(stack: LocalStack, nc: NATS, tmp_path: Path) -> None:
    """A ramp step (compressed time, wrapping and leaking meters) and an hourly window, both protocols."""
    first_id = _first_id(1)
    await stack.provision(2 * 60, 0.5, first_id)
    pools = [RampPool(p, 60, first_id, PROFILES) for p in ("nbiot", "sigfox")]
    batches = [pool.step(rate=100, seconds=3) for pool in pools]
    hourly_first = _first_id(2)
    await stack.provision(2 * 7200, 0.5, hourly_first)
    hour = int(time.time()) // 3600 * 3600 - 2 * 3600
    for protocol in ("nbiot", "sigfox"):
        batches.append(compressed_hour(HourlyFleet(protocol, 7200, hourly_first, PROFILES), hour))
    outcomes = await generated(stack, nc, batches, tmp_path / "gen")
    conn = await asyncpg.connect(stack.database_url)
    try:
        await stored_exactly(conn, outcomes)
        # verify() itself notices a reading that was never sent: one lost.
        ghost = outcomes[0].batch.reading(0)
        ghost = SentReading(ghost.protocol, ghost.device, ghost.seq + 7, ghost.device_time + 86_400 * 3,
                            ghost.period_end + 86_400 * 3, ghost.index, ghost.counts)
        sent = list(outcomes[0].batch.readings())
        delivery = await verify(conn, [*sent, ghost])
        assert delivery.lost == 1 and delivery.delivered == len(sent) and not delivery.exact
        # ... and a bucket whose stored count is not what was sent (the last reading's newest bucket, which no
        # later reading of its device covers): one mismatch, nothing lost.
        last = max(sent, key=lambda r: (r.device_time, r.seq))
        wrong = SentReading(last.protocol, last.device, last.seq, last.device_time, last.period_end, last.index,
                            (*last.counts[:-1], last.counts[-1] + 1))
        delivery = await verify(conn, [r if r is not last else wrong for r in sent])
        assert delivery.bucket_mismatches == 1 and delivery.lost == 0 and not delivery.exact, delivery.line()
    finally:
        await conn.close()


async def test_fast_generator_sends_lorawan_webhooks_stored_exactly(
    stack: LocalStack, nc: NATS, tmp_path: Path,
) -> None:
    """A ramp step and an hourly window of LoRaWAN meters, half through each network server's format."""
    ramp, hourly = RampPool("lorawan", 40, _first_id(3), PROFILES), HourlyFleet("lorawan", 7200, _first_id(4), PROFILES)
    await register(stack, "lorawan", ramp.ids() + hourly.ids())
    batches = [ramp.step(rate=100, seconds=2), compressed_hour(hourly, int(time.time()) // 3600 * 3600 - 2 * 3600)]
    outcomes = await generated(stack, nc, batches, tmp_path / "gen")
    conn = await asyncpg.connect(stack.database_url)
    try:
        await stored_exactly(conn, outcomes)
        assert all(set(outcome.result["statuses"]) == {"200"} for outcome in outcomes), outcomes
    finally:
        await conn.close()


@pytest.mark.parametrize("mode", ["fire"])
async def test_fire_and_forget_sends_everything_once(tmp_path: Path, mode: str) -> None:
    """The peer's mode: every datagram leaves once, at the planned rate, nothing is awaited."""
    import socket

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sink.setblocking(False)
    batch = RampPool("nbiot", 50, _first_id(3), PROFILES).step(rate=400, seconds=1)
    spec = Spec(batch="", out="", mode=mode, port=sink.getsockname()[1], sockets=4)
    outcomes = await run_generators([GeneratorJob("peer", batch, spec)], tmp_path / "gen")
    received = 0
    await asyncio.sleep(0.2)
    while True:
        try:
            sink.recv(128)
        except BlockingIOError:
            break
        received += 1
    sink.close()
    assert outcomes[0].result["sent"] == len(batch) == received
    assert outcomes[0].result["retransmitted"] == 0


def step_runner(stack: LocalStack, nc: NATS, workdir: Path) -> StepRunner:
    """A step runner as the benchmark's, following the stack's services."""
    groups = ProcessGroups()
    for name, service in stack.services.items():
        assert service.process is not None
        groups.add(name, service.process.pid)
    return StepRunner(urls=stack.metrics_urls(), groups=groups, database_url=stack.database_url, nc=nc,
                      workdir=workdir, display=Display(), drain_timeout=60, max_p99=30.0)


async def test_a_step_measures_what_a_reading_costs(stack: LocalStack, nc: NATS, tmp_path: Path) -> None:
    """A footprint step as the benchmark runs it (24 hourly readings per meter): bytes on disk after VACUUM
    ANALYZE, WAL between two positions, rows from the table statistics, CPU per process, each per reading."""
    first_id = _first_id(4)
    await stack.provision(40, 1.0, first_id)
    pool = RampPool("nbiot", 40, first_id, PROFILES)
    readings = 24 * len(pool.active)
    batch = pool.step(rate=300, seconds=readings / 300, min_per_device=24)
    runner = step_runner(stack, nc, tmp_path)
    step = StepResult(name="footprint", kind="footprint", mix="nbiot", target_rate=300, window=readings / 300,
                      registered=len(pool.active))
    result, _ = await runner.run(step, jobs(stack, [batch]))

    assert result.complete and result.delivered == readings == len(batch), result.delivery_line
    per = result.per_reading
    # More than the datagram it came in (43 bytes with n = 4): a reading row, its state and rollups, with indexes.
    assert per["disk bytes"] > 43, per
    assert "readings" in result.disk_growth, result.disk_growth
    assert per["disk bytes"] == pytest.approx(sum(per["disk bytes by table"].values()))
    assert per["wal bytes"] > 43, per
    assert per["rows"] >= 1 and per["rows by table"]["readings"] > 0.5, per
    assert per["cpu us"]["raw-processor"] > 0, per
    assert result.retransmitted >= 0 and result.http_retries == 0


async def test_a_soak_samples_every_curve_over_its_window(stack: LocalStack, nc: NATS, tmp_path: Path) -> None:
    """The soak's sampler as `python -m bench --soak` runs it, at smoke size: a sample per interval with the
    stored rate, p99, every process's memory, the streams' bytes, the database's growth and WAL; slopes fitted;
    the report's section and plot written from its JSON."""
    first_id = _first_id(5)
    await stack.provision(60, 1.0, first_id)
    pool = RampPool("nbiot", 60, first_id, PROFILES)
    runner = step_runner(stack, nc, tmp_path)
    sampler = SoakSampler(stack.metrics_urls(), runner.groups, stack.database_url, nc, every=2.0)
    step = StepResult(name="soak", kind="soak", mix="nbiot", target_rate=100, window=12)
    result, _ = await runner.run(step, jobs(stack, [pool.step(rate=100, seconds=12)]), during=sampler.run)

    assert result.complete, result.delivery_line
    samples = sampler.samples
    assert len(samples) == 6 and [s.at for s in samples] == sorted(s.at for s in samples), samples
    assert samples[-1].stored > 0 and all(s.stored_rate >= 0 for s in samples)
    assert all(samples[-1].rss.get(name, 0) > 0 for name in stack.services), samples[-1].rss
    assert "RAW" in samples[-1].stream_bytes and samples[-1].wal_bytes > 0 and samples[-1].database_bytes > 0
    fitted = slopes(samples, result.window)
    assert "stored readings/s" in fitted and any(name.startswith("RSS ") for name in fitted), fitted
    text = "\n".join(soak.markdown(sampler.to_json(result.window), result.to_json()))
    # The verdict is the step's (its p99 on a shared machine); the section only has to render it.
    assert text.startswith("## Soak") and "| stored readings/s |" in text and "verdict: " in text, text
    assert "- checkpoints completed in the intervals ending at minute:" in text, text


def test_a_slope_is_fitted_per_hour_and_judged_against_its_mean() -> None:
    steady = fit([(t, 100.0 + (1 if t % 2 else -1)) for t in range(0, 3600, 60)])
    growing = fit([(t, 100.0 + t / 36) for t in range(0, 3600, 60)])  # +100 an hour
    assert steady is not None and steady.flat and abs(steady.per_hour) < 1
    assert growing is not None and not growing.flat and growing.per_hour == pytest.approx(100.0)
    assert fit([(0, 1.0), (1, 2.0)]) is None  # too few points to say


def test_checkpoints_and_autovacuums_are_listed_by_the_interval_they_completed_in() -> None:
    def sample(at: float, checkpoints: int, autovacuums: int) -> soak.SoakSample:
        return soak.SoakSample(at=at, stored=at * 100, stored_rate=100, p99=at / 100, rss={}, stream_bytes={},
                               database_bytes=0, wal_bytes=0, archived=0, archive_failed=0,
                               checkpoints=checkpoints, autovacuums=autovacuums)

    samples = [sample(60, 0, 1), sample(120, 2, 1), sample(180, 2, 3)]
    assert soak.events(samples) == {"checkpoints": [2.0, 2.0], "autovacuum runs": [1.0, 3.0, 3.0]}
    assert "checkpoints" not in soak.series(samples) and "autovacuums" not in soak.series(samples)
    text = "\n".join(soak.markdown({"every": 60, "warm_up": 0.1, "flat": 0.05,
                                     "samples": [dataclasses.asdict(s) for s in samples]}, None))
    assert "- checkpoints completed in the intervals ending at minute: 2.0, 2.0." in text, text
    assert "- highest p99 intervals (ending at minute: p99): 3.0: 1.80 s, 2.0: 1.20 s, 1.0: 0.60 s." in text, text


def test_archived_wal_is_a_curve_only_when_the_server_archives() -> None:
    def sample(at: float, wal: int, archived: int) -> soak.SoakSample:
        return soak.SoakSample(at=at, stored=at * 100, stored_rate=100, p99=0.1, rss={}, stream_bytes={},
                               database_bytes=0, wal_bytes=wal, archived=archived, archive_failed=0)

    archiving = soak.series([sample(0, 0, 0), sample(30, 32 * soak.MIB, 2), sample(60, 64 * soak.MIB, 3)])
    assert archiving["WAL archived bytes/s"] == [(30, 2 * soak.WAL_SEGMENT / 30), (60, soak.WAL_SEGMENT / 30)]
    assert archiving["WAL bytes/s"] == [(30, 32 * soak.MIB / 30), (60, 32 * soak.MIB / 30)]
    quiet = soak.series([sample(0, 0, 0), sample(30, 32 * soak.MIB, 0)])
    assert "WAL archived bytes/s" not in quiet


async def test_the_benchmark_registers_its_fleet_in_chunks_as_the_registry_does(stack: LocalStack, nc: NATS) -> None:
    """bench/run.py's bulk registration: every meter in the table, enabled, and in its registry shard."""
    first_id, count = _first_id(3), 1_200
    seconds = await bulk_register(stack.database_url, stack.nats_url, "lorawan", first_id, count, Display(),
                                  chunk=500)
    assert seconds > 0
    ids = [simulated_id("lorawan", first_id + i) for i in range(count)]
    conn = await asyncpg.connect(stack.database_url)
    try:
        assert await registry.enabled(conn, [("lorawan", d) for d in ids]) == {("lorawan", d) for d in ids}
    finally:
        await conn.close()
    kv = await nc.jetstream().key_value(REGISTRY_BUCKET)
    for i in (0, 499, 500, count - 1):
        number = simulated_number("lorawan", first_id + i)
        shard = (await kv.get(members_key("lorawan", shard_of(number)))).value or b""
        assert number in unpack(shard), i
