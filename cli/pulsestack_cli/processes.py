"""The services as separate processes, with the same entry points the containers use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pulsestack import allocator
from pulsestack.services import BY_NAME, LOCAL

# `pulsestack run all`: the services of the catalogue marked `in_all`, in one process.
ALL = "all"
# What `pulsestack run local` (and the tests' stack) starts: each service apart, not the one-process form.
STACK_SERVICES = tuple(s.name for s in LOCAL)


def command(name: str) -> list[str]:
    """The interpreter's arguments that start the service `name` (or `all`), as its container does."""
    return ["-m", "pulsestack_cli", "run", ALL] if name == ALL else ["-m", BY_NAME[name].module]


@dataclass
class ServiceProcess:
    name: str
    env: dict[str, str]
    ops_port: int
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self, **extra_env: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.env, **self.extra_env, **extra_env}
        env.update(allocator.environment(env))  # as in the images: pulsestack/allocator.py
        self.process = subprocess.Popen([sys.executable, *command(self.name)], env=env, stdout=log, stderr=log)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ops_port}{path}"

    def wait_ready(self, timeout: float = 30.0, more_ports: tuple[int, ...] = ()) -> None:
        """Until /readyz answers 200 on its ops port and on `more_ports` (the other stages of `all`)."""
        deadline = time.monotonic() + timeout
        waiting = [self.ops_port, *more_ports]
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited: see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{waiting[0]}/readyz", timeout=1) as response:
                    if response.status == 200:
                        waiting.pop(0)
                        if not waiting:
                            return
                        continue
            except OSError:
                pass
            time.sleep(0.1)
        waits_for = f" (it waits for: {BY_NAME[self.name].readiness})" if self.name in BY_NAME else ""
        raise TimeoutError(f"{self.name} not ready after {timeout} s{waits_for}: see {self.log_path}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, as Docker does, then SIGKILL after `timeout` (the stop grace period)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self.process = None
        return code
