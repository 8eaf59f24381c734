"""`pulsestack run local` run again on the same workdir, as `make run` is: the second run continues the fleet
(new readings, none a duplicate of the first run's), a smaller run disables the simulated devices it leaves
out instead of letting them go silent and raise alerts, and `--fresh` (`make run FRESH=1`) starts clean.
Each run is a real `pulsestack run local` with its own embedded servers, as an operator starts it."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from pulsestack.wire.codecs import PROTOCOLS
from pulsestack_cli.localstack import Postgres
from simulator.fleet import READING_SECONDS, Meter

RATE, SECONDS = 40, 8
_PER_PROTOCOL = "".join(rf" {p} +[\d,]+" for p in PROTOCOLS)
SUMMARY_LINE = re.compile(
    rf"^ *\d+ s \| received{_PER_PROTOCOL} \| stored{_PER_PROTOCOL} \| .* \| duplicates \d+ \| quarantined \d+ \|")


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not under pytest's temporary root: pytest keeps that 0700, and PostgreSQL runs as its own user.
    path = Path(tempfile.mkdtemp(prefix="pulsestack-runs-"))
    yield path / "local"
    shutil.rmtree(path, ignore_errors=True)


def run_local(workdir: Path, devices: int, *extra: str) -> str:
    """A run of `pulsestack run local` that stops by itself; its output, which is not a terminal here."""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "pulsestack_cli", "run", "local", "--workdir", str(workdir), "--devices", str(devices),
         "--rate", str(RATE), "--duration", str(SECONDS), "--udp-port", "0", "--http-port", "0", "--api-port", "0",
         *extra],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr + logs(workdir)
    return result.stdout


def logs(workdir: Path) -> str:
    """The end of every service's log, for a failure's message (the workdir goes with the test)."""
    return "".join(f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                   for log in sorted((workdir / "logs").glob("*.log")))


def summary_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if " s | received " in line]


def acked(out: str) -> int:
    match = re.search(r"^acked (\{.*?\}) \(as duplicate (\{.*?\})\)", out, re.MULTILINE)
    assert match, f"no acked line in:\n{out}"
    per_protocol, duplicates = ast.literal_eval(match[1]), ast.literal_eval(match[2])
    assert set(per_protocol) == set(PROTOCOLS) and not any(duplicates.values()), match[0]
    return sum(per_protocol.values())


@dataclass
class Stored:
    raw: int
    last: dict[tuple[str, str], tuple[int, float]]  # per device: last seq, last device time
    readings: dict[tuple[str, str], int]
    disabled: set[tuple[str, str]]
    silent_open: set[tuple[str, str]]
    longest_interval: int  # the longest reporting interval the raw stage learnt, in seconds


def stored(workdir: Path) -> Stored:
    """What the stopped stack's database holds (its PostgreSQL started for the look, then stopped)."""
    async def look() -> Stored:
        conn = await asyncpg.connect(postgres.url())
        try:
            state = await conn.fetch(
                "SELECT protocol, device_id, last_seq, last_device_time, readings, interval_seconds FROM device_state")
            return Stored(
                raw=await conn.fetchval("SELECT count(*) FROM readings"),
                last={(r["protocol"], r["device_id"]): (r["last_seq"], r["last_device_time"].timestamp())
                      for r in state},
                readings={(r["protocol"], r["device_id"]): r["readings"] for r in state},
                disabled={(r["protocol"], r["device_id"])
                          for r in await conn.fetch("SELECT protocol, device_id FROM devices WHERE disabled")},
                silent_open={(r["protocol"], r["device_id"]) for r in await conn.fetch(
                    "SELECT protocol, device_id FROM alerts WHERE kind = 'silent' AND resolved_at IS NULL")},
                longest_interval=max((r["interval_seconds"] or 0 for r in state), default=0),
            )
        finally:
            await conn.close()

    postgres = Postgres(workdir / "postgres")
    postgres.start()
    try:
        return asyncio.run(look())
    finally:
        postgres.stop()


def test_a_second_run_continues_the_fleet_and_a_smaller_one_retires_the_rest(workdir: Path) -> None:
    first_out = run_local(workdir, 20)
    lines = summary_lines(first_out)
    assert len(lines) >= 3 and all(SUMMARY_LINE.match(line) for line in lines), first_out
    assert "\x1b" not in first_out  # plain lines when stdout is not a terminal
    first = stored(workdir)
    assert first.raw == acked(first_out) > 0 and len(first.last) == 20, first_out + logs(workdir)

    second_out = run_local(workdir, 20)
    second = stored(workdir)
    # Every reading of the second run is new: the raw stage stored each one, found none already there.
    assert second.raw - first.raw == acked(second_out) > 0
    assert re.search(r"\| duplicates 0 \|", summary_lines(second_out)[-1]), second_out
    for device, (seq, device_time) in first.last.items():
        later_seq, later_time = second.last[device]
        assert later_time > device_time, device
        assert later_seq == (seq + second.readings[device] - first.readings[device]) % (
            4096 if device[0] == "sigfox" else 2**63), device
    assert "20 of 20 devices continue after their last stored reading" in second_out

    # A smaller run: the ten it leaves out are disabled, so they raise no silent-meter alerts. By the
    # alerting service's first sweep they have been silent for more than three of their intervals.
    time.sleep(3 * second.longest_interval)
    third_out = run_local(workdir, 10)
    assert "disabled 10 simulated devices of an earlier, larger run" in third_out
    third = stored(workdir)
    assert len(third.disabled) == 10 and third.disabled <= set(first.last)
    assert not third.silent_open & third.disabled, third.silent_open & third.disabled
    assert third.raw - second.raw == acked(third_out) > 0


def test_fresh_starts_clean(workdir: Path) -> None:
    run_local(workdir, 20)
    key = (workdir / "secrets" / "device-master-key").read_text()
    out = run_local(workdir, 6, "--fresh")
    assert f"removed the earlier local stack in {workdir}" in out and "continue after" not in out
    assert (workdir / "secrets" / "device-master-key").read_text() != key
    clean = stored(workdir)
    assert clean.raw == acked(out) and len(clean.last) == 6 and not clean.disabled


def test_fresh_leaves_a_folder_that_is_not_a_local_stack_alone(workdir: Path) -> None:
    workdir.mkdir()
    (workdir / "thesis.tex").write_text("keep me")
    result = subprocess.run([sys.executable, "-m", "pulsestack_cli", "run", "local", "--workdir", str(workdir),
                             "--fresh"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "not wiping it" in result.stderr and "Traceback" not in result.stderr
    assert (workdir / "thesis.tex").read_text() == "keep me"


def test_a_resumed_meter_wraps_sigfox_seq_and_starts_no_earlier_than_its_own_start() -> None:
    meter = Meter("sigfox", "1A0001", 0x1A0001, b"", next_period_end=1_000 * READING_SECONDS)
    meter.resume(last_period_end=2_000 * READING_SECONDS, last_seq=4095, last_index=77)
    reading = meter.next_reading()
    assert reading.seq == 0 and reading.period_end == 2_001 * READING_SECONDS
    assert reading.index == 77 + sum(reading.counts)
    # A store older than the meter's own start (an old var/local): it starts there, not beyond the
    # ingesters' maximum age; a gap, not readings they would refuse as too old.
    old = Meter("nbiot", "356938035600001", 356938035600001, b"", next_period_end=1_000 * READING_SECONDS)
    old.resume(last_period_end=500 * READING_SECONDS, last_seq=9, last_index=0)
    reading = old.next_reading()
    assert reading.period_end == 1_000 * READING_SECONDS and reading.seq == 10


def service_pids(workdir: Path, module: str) -> list[int]:
    """The processes of `python -m <module>` that this workdir's stack started (their environment names it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            command = proc.joinpath("cmdline").read_bytes().split(b"\0")[1:3] if proc.name.isdigit() else []
            if command == [b"-m", module.encode()] and str(workdir).encode() in proc.joinpath("environ").read_bytes():
                pids.append(int(proc.name))
        except (OSError, IndexError):
            continue
    return pids


def test_a_service_that_dies_during_the_run_fails_it_by_name(workdir: Path) -> None:
    """A processor that exits mid-run must not end in a summary that reads like success (CI once saw a run
    that acknowledged 319 readings and stored none, with exit code 0)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    run = subprocess.Popen(
        [sys.executable, "-m", "pulsestack_cli", "run", "local", "--workdir", str(workdir), "--devices", "4",
         "--rate", "4", "--duration", "60", "--udp-port", "0", "--http-port", "0", "--api-port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        # The env file is written once every service answered ready: the fleet is about to start.
        while not (workdir / "env").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = service_pids(workdir, "processors")
        assert pids, "the processor never started"
        time.sleep(3)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        out, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:  # SIGTERM: the run stops its servers and services (SIGKILL would orphan them)
            run.terminate()
            run.wait(60)
    assert run.returncode == 1, out
    assert re.search(r"^pulsestack: raw-processor exited with code -9 during the run: see .*raw-processor\.log$",
                     out, re.MULTILINE), out
