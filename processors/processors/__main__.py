"""`python -m processors` (the container's command)."""

from __future__ import annotations

from processors.app import serve
from processors.config import ProcessorConfig
from pulsestack.service import run as run_service


def run() -> None:
    config = ProcessorConfig.from_env()
    run_service(config.common.service, lambda stop: serve(config, stop), config.common.log_level)


if __name__ == "__main__":
    run()
