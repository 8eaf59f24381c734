"""`python -m ingest_udp` (the container's command)."""

from __future__ import annotations

from ingest_udp.app import serve
from ingest_udp.config import UdpIngestConfig
from pulsestack.service import run as run_service


def run() -> None:
    config = UdpIngestConfig.from_env()
    run_service("ingest-udp", lambda stop: serve(config, stop), config.common.log_level)


if __name__ == "__main__":
    run()
