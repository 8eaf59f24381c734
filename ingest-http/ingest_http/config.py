from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pulsestack.config import CommonConfig, ConfigError, env_float, env_int, env_str
from pulsestack.http import HttpLimits
from pulsestack.services import INGEST_HTTP


@dataclass(frozen=True, slots=True)
class HttpIngestConfig:
    common: CommonConfig
    host: str
    port: int
    http: HttpLimits
    tokens_file: Path | None
    tokens_inline: tuple[str, ...]
    max_age_seconds: float
    answer_within: float
    group_max_readings: int
    group_max_delay: float

    @classmethod
    def from_env(cls) -> HttpIngestConfig:
        tokens_file = os.environ.get("PULSESTACK_SIGFOX_TOKENS_FILE")
        inline = tuple(t for t in os.environ.get("PULSESTACK_SIGFOX_TOKENS", "").split(",") if t)
        if not tokens_file and not inline:
            raise ConfigError("PULSESTACK_SIGFOX_TOKENS_FILE (one token per line) is required")
        return cls(
            common=CommonConfig.from_env(INGEST_HTTP.name),
            host=env_str("PULSESTACK_HTTP_HOST", "0.0.0.0"),
            port=INGEST_HTTP.ops.from_env(),
            http=HttpLimits.from_env(),
            tokens_file=Path(tokens_file) if tokens_file else None,
            tokens_inline=inline,
            max_age_seconds=env_float("PULSESTACK_MAX_AGE", 30 * 86_400),
            # The Sigfox backend gives up after 10 s and retries; answer 503 well before that.
            answer_within=env_float("PULSESTACK_ANSWER_WITHIN", 7.0),
            # Readings grouped per RAW message: each message costs an fsync before its PubAck.
            group_max_readings=env_int("PULSESTACK_GROUP_MAX", 256),
            group_max_delay=env_float("PULSESTACK_GROUP_DELAY", 0.005),
        )
