"""SIGTERM, as `docker stop` and every rolling update send it: each service finishes and exits by itself.

A service that ignores it is killed at the end of its stop grace period (stack.yml): every update,
scale-down and drain then waits the whole period, and the in-flight batch is handed back by the kill
instead of by the service.
"""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import pytest

from pulsestack_cli.local import LocalStack
from pulsestack_cli.processes import STACK_SERVICES

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Shorter than any service's stop_grace_period in stack.yml (30 s and more).
GRACE = 25.0


@pytest.mark.parametrize("service", sorted(STACK_SERVICES))
async def test_service_exits_by_itself_on_sigterm(stack: LocalStack, service: str) -> None:
    proc = stack.services[service]
    proc.wait_ready()
    code = proc.stop(timeout=GRACE)
    assert code == 0, f"{service} did not exit by itself on SIGTERM within {GRACE} s (exit {code}): see {proc.log_path}"


async def test_ctrl_c_stops_every_service_without_a_traceback() -> None:
    """`make run`'s Ctrl-C reaches every process at once: NATS may be gone before a service drains."""
    stack = LocalStack(Path(tempfile.mkdtemp(prefix="pulsestack-ctrl-c-")))
    stack.start_servers()
    try:
        await stack.prepare()
        stack.configure_services()
        stack.start_services()
        assert stack.nats is not None and stack.nats.process is not None
        processes = [service.process for service in stack.services.values() if service.process is not None]
        for process in [stack.nats.process, *processes]:
            process.send_signal(signal.SIGINT)
        for service in stack.services.values():
            assert service.wait_exit(GRACE) == 0, f"{service.name}: see {service.log_path}"
    finally:
        stack.stop()
    tracebacks = {name: service.log_path for name, service in stack.services.items()
                  if "Traceback" in service.log_path.read_text()}
    assert not tracebacks, f"tracebacks in {tracebacks}"
