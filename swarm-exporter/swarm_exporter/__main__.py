"""`python -m swarm_exporter` (the container's command)."""

from __future__ import annotations

from pulsestack.service import run as run_service
from swarm_exporter.app import serve
from swarm_exporter.config import SwarmExporterConfig


def run() -> None:
    config = SwarmExporterConfig.from_env()
    run_service("swarm-exporter", lambda stop: serve(config, stop), config.log_level)


if __name__ == "__main__":
    run()
