from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pulsestack.config import CommonConfig, ConfigError, database_url, env_int, env_str
from pulsestack.http import HttpLimits
from pulsestack.services import API


@dataclass(frozen=True, slots=True)
class ApiConfig:
    common: CommonConfig
    database_url: str
    host: str
    port: int
    http: HttpLimits
    tokens_file: Path | None
    tokens_inline: tuple[str, ...]
    max_points: int

    @classmethod
    def from_env(cls) -> ApiConfig:
        tokens_file = os.environ.get("PULSESTACK_API_TOKENS_FILE")
        inline = tuple(t for t in os.environ.get("PULSESTACK_API_TOKENS", "").split(",") if t)
        if not tokens_file and not inline:
            raise ConfigError("PULSESTACK_API_TOKENS_FILE (one token per line) is required")
        return cls(
            common=CommonConfig.from_env(API.name),
            database_url=database_url(),
            host=env_str("PULSESTACK_API_HOST", "0.0.0.0"),
            port=API.ops.from_env(),
            http=HttpLimits.from_env(),
            tokens_file=Path(tokens_file) if tokens_file else None,
            tokens_inline=inline,
            # A year of hours: enough for a chart, bounded for the database.
            max_points=env_int("PULSESTACK_API_MAX_POINTS", 8784),
        )
