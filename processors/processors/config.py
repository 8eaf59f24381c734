from __future__ import annotations

from dataclasses import dataclass

from pulsestack.bus.topology import BusLimits
from pulsestack.config import CommonConfig, database_url, env_float, env_int, env_str
from pulsestack.services import RAW_PROCESSOR


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    common: CommonConfig
    database_url: str
    ops_host: str
    ops_port: int
    batch: int
    max_wait: float
    pool_size: int
    concurrency: int
    limits: BusLimits

    @classmethod
    def from_env(cls) -> ProcessorConfig:
        return cls(
            common=CommonConfig.from_env(RAW_PROCESSOR.name),
            database_url=database_url(),
            ops_host=env_str("PULSESTACK_OPS_HOST", "0.0.0.0"),
            ops_port=RAW_PROCESSOR.ops.from_env(),
            # Messages per fetch; each carries up to 64 readings, so a batch stays a few thousand readings.
            batch=env_int("PULSESTACK_BATCH", 100),
            # Once a quiet stream wakes up, a fetch waits this long for its batch to fill: it bounds the
            # latency added at low rates (an idle worker polls this often).
            max_wait=env_float("PULSESTACK_BATCH_WAIT", 0.1),
            pool_size=env_int("PULSESTACK_DB_POOL", 3),
            concurrency=env_int("PULSESTACK_CONCURRENCY", 2),
            limits=BusLimits.from_env(),
        )
