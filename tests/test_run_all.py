"""`pulsestack run all`: every pipeline stage in one process, each with its own ops endpoints."""

from __future__ import annotations

from pathlib import Path

from pulsestack_cli.local import LocalStack
from pulsestack_cli.localstack import free_port, free_ports
from pulsestack_cli.processes import ServiceProcess


def test_every_stage_starts_in_one_process_with_one_ops_port_given(stack: LocalStack, tmp_path: Path) -> None:
    """PULSESTACK_OPS_PORT=P (as the bench and a container set it): the UDP ingester on P, the raw and pulse
    stages on P+1 and P+2, the HTTP ingester on its own port; all ready, then a clean stop."""
    ops, http = free_ports(3), free_port()
    env = {**stack.service_env, "DATABASE_URL": stack.database_url, "PULSESTACK_OPS_PORT": str(ops),
           "PULSESTACK_UDP_PORT": str(free_port()), "PULSESTACK_HTTP_PORT": str(http)}
    one = ServiceProcess("all", env, ops, tmp_path / "all.log")
    one.start()
    try:
        one.wait_ready(60, more_ports=(ops + 1, ops + 2, http))
    finally:
        code = one.stop()
    assert code == 0, (tmp_path / "all.log").read_text()[-2000:]
