"""`python -m processors raw|pulse` (the container's command)."""

from __future__ import annotations

import sys

from processors.app import serve
from processors.config import ProcessorConfig
from pulsestack.service import run as run_service


def run() -> None:
    stage = sys.argv[1] if len(sys.argv) > 1 else ""
    config = ProcessorConfig.from_env(stage)
    run_service(config.common.service, lambda stop: serve(config, stop), config.common.log_level)


if __name__ == "__main__":
    run()
