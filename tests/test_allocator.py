"""Every service process runs on jemalloc (pulsestack/allocator.py), as in the images: the local stack's
processes are what the months test measures memory on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pulsestack import allocator
from pulsestack_cli.local import LocalStack
from tests.unavailable import unavailable


@pytest.mark.asyncio(loop_scope="session")
async def test_every_service_of_the_local_stack_runs_on_jemalloc(stack: LocalStack) -> None:
    if allocator.jemalloc() is None:
        unavailable("libjemalloc2 is not installed (make tools)")
    for name, service in stack.services.items():
        assert service.process is not None and allocator.in_use(service.process.pid), name


def test_a_process_started_without_its_environment_is_not_on_jemalloc() -> None:
    """The check above can fail: the library is not loaded by itself."""
    code = "from pulsestack import allocator; print(allocator.in_use())"
    env = {"PATH": "/usr/bin:/bin"}
    bare = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert bare.stdout.strip() == "False"
    if allocator.jemalloc() is None:
        unavailable("libjemalloc2 is not installed (make tools)")
    preloaded = subprocess.run([sys.executable, "-c", code], env={**env, **allocator.environment(env)},
                               capture_output=True, text=True, check=True)
    assert preloaded.stdout.strip() == "True"


def test_a_preload_the_caller_had_is_kept() -> None:
    if allocator.jemalloc() is None:
        unavailable("libjemalloc2 is not installed (make tools)")
    assert allocator.environment({"LD_PRELOAD": "/opt/x.so"})["LD_PRELOAD"].endswith(" /opt/x.so")
    assert "LD_PRELOAD" not in allocator.environment({"LD_PRELOAD": str(allocator.jemalloc())})
