"""The README's operating section works verbatim against a running `make run`: every command of its first
block runs, as written, beside `pulsestack run local` in a fresh directory, and answers without an error."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def operating_commands() -> list[str]:
    """The commands of the first ```sh block under "## Operating it", without their comments."""
    section = README.read_text().split("## Operating it", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no sh block in the README's operating section"
    commands = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [c for c in commands if c.startswith("pulsestack ")]


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`pulsestack run local` (what `make run` runs) in an empty directory; yields the environment a user's
    shell has after `source .venv/bin/activate` there: no server named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "DATABASE_", "PULSESTACK_LOCAL"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = (tmp_path / "run.log").open("w")
    # Free ports rather than make run's fixed ones, which a developer's own `make run` may hold.
    proc = subprocess.Popen(["pulsestack", "run", "local", "--devices", "20", "--rate", "10", "--udp-port", "0",
                             "--http-port", "0", "--api-port", "0"], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "var/local/env").exists():
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.5)
        yield env
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, (tmp_path / "run.log").read_text()
        assert "Traceback" not in (tmp_path / "run.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_the_operating_section_works_verbatim_against_make_run(make_run: dict[str, str], tmp_path: Path) -> None:
    commands = operating_commands()
    assert len(commands) >= 10, commands
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=make_run, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (command, done.stdout, done.stderr)
        if command == "pulsestack env":
            assert all(line.startswith("export ") for line in done.stdout.splitlines()), done.stdout
        if " --json" in command:
            for line in done.stdout.splitlines():
                assert isinstance(json.loads(line), dict), (command, line)
