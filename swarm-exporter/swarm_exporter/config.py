from __future__ import annotations

import os
from dataclasses import dataclass

from pulsestack.config import ConfigError, env_float, env_str
from pulsestack.services import SWARM_EXPORTER


@dataclass(frozen=True, slots=True)
class SwarmExporterConfig:
    docker_host: str  # unix:///var/run/docker.sock, or tcp://socket-proxy:2375
    ops_host: str
    ops_port: int
    interval: float
    stack: str  # only services of this stack namespace ("" = every service)
    probe_postgres: bool
    probe_timeout: float
    log_level: str

    @classmethod
    def from_env(cls) -> SwarmExporterConfig:
        docker_host = env_str("DOCKER_HOST", "unix:///var/run/docker.sock")
        if not docker_host.startswith(("unix://", "tcp://", "http://")):
            raise ConfigError(f"DOCKER_HOST must be unix://PATH or tcp://HOST:PORT, got {docker_host!r}")
        return cls(
            docker_host=docker_host,
            ops_host=env_str("PULSESTACK_OPS_HOST", "0.0.0.0"),
            ops_port=SWARM_EXPORTER.ops.from_env(),
            interval=env_float("PULSESTACK_SWARM_INTERVAL", 15.0),
            stack=env_str("PULSESTACK_SWARM_STACK", ""),
            # DATABASE_URL (+ PULSESTACK_DB_PASSWORD_FILE) names what is probed; off without it.
            probe_postgres=bool(os.environ.get("DATABASE_URL")),
            probe_timeout=env_float("PULSESTACK_PROBE_TIMEOUT", 5.0),
            log_level=env_str("PULSESTACK_LOG_LEVEL", "info"),
        )
