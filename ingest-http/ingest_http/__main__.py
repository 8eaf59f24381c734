"""`python -m ingest_http` (the container's command)."""

from __future__ import annotations

from ingest_http.app import serve
from ingest_http.config import HttpIngestConfig
from pulsestack.service import run as run_service


def run() -> None:
    config = HttpIngestConfig.from_env()
    run_service("ingest-http", lambda stop: serve(config, stop), config.common.log_level)


if __name__ == "__main__":
    run()
