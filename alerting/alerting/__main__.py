"""`python -m alerting` (the container's command)."""

from __future__ import annotations

from alerting.app import serve
from alerting.config import AlertingConfig
from pulsestack.service import run as run_service


def run() -> None:
    config = AlertingConfig.from_env()
    run_service("alerting", lambda stop: serve(config, stop), config.common.log_level)


if __name__ == "__main__":
    run()
