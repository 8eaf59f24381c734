"""Running load generator processes (`simulator.loadgen`) from asyncio: prepare, start together, follow, collect."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from simulator.batch import ReadingBatch
from simulator.loadgen import Spec, load_result


@dataclass
class GeneratorJob:
    name: str
    batch: ReadingBatch
    spec: Spec  # batch and out are filled in by Generators


@dataclass
class GeneratorOutcome:
    name: str
    batch: ReadingBatch
    result: dict[str, Any]
    status: bytes  # per reading: 0 not acked, 1 acked, 2 acked as duplicate

    @property
    def acked(self) -> int:
        return len(self.status) - self.status.count(0)


@dataclass
class _Proc:
    job: GeneratorJob
    process: asyncio.subprocess.Process
    sent: int = 0
    acked: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Generators:
    """Several generator processes sharing one start time (CLOCK_MONOTONIC is machine-wide)."""

    def __init__(self, jobs: list[GeneratorJob], workdir: Path) -> None:
        if len({job.name for job in jobs}) != len(jobs):
            raise ValueError("generator jobs need distinct names")
        self.jobs = jobs
        self.workdir = workdir
        self.procs: list[_Proc] = []
        self._readers: list[asyncio.Task[None]] = []
        self.t0 = 0.0

    @property
    def pids(self) -> dict[str, int]:
        return {p.job.name: p.process.pid for p in self.procs}

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.procs)

    @property
    def acked(self) -> int:
        return sum(p.acked for p in self.procs)

    def progress(self) -> dict[str, tuple[int, int]]:
        return {p.job.name: (p.sent, p.acked) for p in self.procs}

    async def prepare(self, timeout: float = 600.0) -> None:
        """Saves each batch, starts its process and waits until every one has pre-computed its frames."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for job in self.jobs:
            batch_path = self.workdir / f"{job.name}.batch"
            spec_path = self.workdir / f"{job.name}.json"
            job.batch.save(batch_path)
            job.spec = replace(job.spec, batch=str(batch_path), out=str(self.workdir / f"{job.name}.out"))
            job.spec.save(spec_path)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "simulator.loadgen", str(spec_path),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )
            self.procs.append(_Proc(job, process))
        for proc in self.procs:
            assert proc.process.stdout is not None
            line = await asyncio.wait_for(proc.process.stdout.readline(), timeout)
            if not line.startswith(b"ready"):
                raise RuntimeError(f"load generator {proc.job.name} did not start: {line!r}")

    def start(self, delay: float = 0.2) -> float:
        """Starts every generator at the same instant, `delay` from now; returns that instant (monotonic)."""
        self.t0 = time.monotonic() + delay
        for proc in self.procs:
            assert proc.process.stdin is not None
            proc.process.stdin.write(f"go {self.t0!r}\n".encode())
            self._readers.append(asyncio.create_task(self._follow(proc)))
        return self.t0

    async def _follow(self, proc: _Proc) -> None:
        assert proc.process.stdout is not None
        async for line in proc.process.stdout:
            parts = line.split()
            if parts and parts[0] == b"progress":
                proc.sent, proc.acked = int(parts[1]), int(parts[2])
            elif parts and parts[0] == b"done":
                proc.done.set()

    async def wait(self) -> list[GeneratorOutcome]:
        outcomes = []
        for proc in self.procs:
            code = await proc.process.wait()
            if code:
                raise RuntimeError(f"load generator {proc.job.name} exited with {code}")
            result, status = load_result(Path(proc.job.spec.out))
            outcomes.append(GeneratorOutcome(proc.job.name, proc.job.batch, result, status))
        for reader in self._readers:
            reader.cancel()
        return outcomes

    def kill(self) -> None:
        for proc in self.procs:
            if proc.process.returncode is None:
                proc.process.kill()


async def run_generators(jobs: list[GeneratorJob], workdir: Path) -> list[GeneratorOutcome]:
    """Prepare, start together, wait: the whole life of one step's generators."""
    generators = Generators(jobs, workdir)
    try:
        await generators.prepare()
        generators.start()
        return await generators.wait()
    finally:
        generators.kill()
