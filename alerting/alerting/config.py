from __future__ import annotations

import os
from dataclasses import dataclass

from pulsestack.config import CommonConfig, database_url, env_float, env_int, env_str, secret
from pulsestack.services import ALERTING
from pulsestack.store.maintenance import MONTHS_AHEAD, Retention


@dataclass(frozen=True, slots=True)
class AlertingConfig:
    common: CommonConfig
    database_url: str
    ops_host: str
    ops_port: int
    sweep_every: float
    default_interval: int
    webhook_url: str | None
    webhook_secret: bytes
    webhook_timeout: float
    maintenance_every: float
    months_ahead: int
    retention: Retention

    @classmethod
    def from_env(cls) -> AlertingConfig:
        url = secret("PULSESTACK_WEBHOOK_URL", "") or None
        has_secret = "PULSESTACK_WEBHOOK_SECRET" in os.environ or "PULSESTACK_WEBHOOK_SECRET_FILE" in os.environ
        return cls(
            common=CommonConfig.from_env(ALERTING.name),
            database_url=database_url(),
            ops_host=env_str("PULSESTACK_OPS_HOST", "0.0.0.0"),
            ops_port=ALERTING.ops.from_env(),
            sweep_every=env_float("PULSESTACK_SWEEP_INTERVAL", 30.0),
            # Reporting interval assumed for a device with a single reading so far.
            default_interval=env_int("PULSESTACK_DEFAULT_INTERVAL", 3600),
            webhook_url=url,
            webhook_secret=secret("PULSESTACK_WEBHOOK_SECRET").encode() if has_secret else b"",
            webhook_timeout=env_float("PULSESTACK_WEBHOOK_TIMEOUT", 10.0),
            maintenance_every=env_float("PULSESTACK_MAINTENANCE_INTERVAL", 3600.0),
            months_ahead=env_int("PULSESTACK_PARTITIONS_AHEAD", MONTHS_AHEAD),
            retention=Retention.from_env(),
        )
