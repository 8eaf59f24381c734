"""`python -m api` (the container's command)."""

from __future__ import annotations

from api.app import serve
from api.config import ApiConfig
from pulsestack.service import run as run_service


def run() -> None:
    config = ApiConfig.from_env()
    run_service("api", lambda stop: serve(config, stop), config.common.log_level)


if __name__ == "__main__":
    run()
