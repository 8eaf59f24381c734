"""SIGTERM, as `docker stop` and every rolling update send it: each service finishes and exits by itself.

A service that ignores it is killed at the end of its stop grace period (stack.yml): every update,
scale-down and drain then waits the whole period, and the in-flight batch is handed back by the kill
instead of by the service.
"""

from __future__ import annotations

import pytest

from pulsestack_cli.local import LocalStack
from pulsestack_cli.processes import SERVICES

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Shorter than any service's stop_grace_period in stack.yml (30 s and more).
GRACE = 25.0


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_service_exits_by_itself_on_sigterm(stack: LocalStack, service: str) -> None:
    proc = stack.services[service]
    proc.wait_ready()
    code = proc.stop(timeout=GRACE)
    assert code == 0, f"{service} did not exit by itself on SIGTERM within {GRACE} s (exit {code}): see {proc.log_path}"
