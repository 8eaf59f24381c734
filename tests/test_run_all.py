"""`pulsestack run all`: the ingesters and the processor in one process, each with its own ops endpoints."""

from __future__ import annotations

from pathlib import Path

from pulsestack_cli.local import LocalStack
from pulsestack_cli.localstack import free_port, free_ports
from pulsestack_cli.processes import ServiceProcess


def test_every_stage_starts_in_one_process_with_one_ops_port_given(stack: LocalStack, tmp_path: Path) -> None:
    """PULSESTACK_OPS_PORT=P (as the bench and a container set it): the UDP ingester on P, the processor on
    P+1, the HTTP ingester on its own port; all ready, then a clean stop."""
    ops, http = free_ports(2), free_port()
    env = {**stack.service_env, "DATABASE_URL": stack.database_url, "PULSESTACK_OPS_PORT": str(ops),
           "PULSESTACK_UDP_PORT": str(free_port()), "PULSESTACK_HTTP_PORT": str(http)}
    one = ServiceProcess("all", env, ops, tmp_path / "all.log")
    one.start()
    try:
        one.wait_ready(60, more_ports=(ops + 1, http))
    finally:
        code = one.stop()
    log = (tmp_path / "all.log").read_text()
    assert code == 0, log[-2000:]
    # It says what it does not host: alerting's sweeps, outbox and webhooks, and the API, run apart.
    assert '"not_hosted":["alerting","api"]' in log, log[-2000:]
