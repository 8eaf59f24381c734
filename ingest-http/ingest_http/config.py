from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ingest_http.routes import ROUTES
from pulsestack.config import CommonConfig, ConfigError, env_float, env_int, env_str
from pulsestack.http import HttpLimits
from pulsestack.services import INGEST_HTTP


def token_variable(realm: str) -> str:
    """PULSESTACK_<REALM>_TOKENS names a route's comma-separated tokens, with _FILE its file of them."""
    return f"PULSESTACK_{realm.upper()}_TOKENS"


def tokens_of(realm: str) -> tuple[Path | None, tuple[str, ...]]:
    """A realm without tokens is served but accepts no callback (401): its network server is not set up."""
    variable = token_variable(realm)
    path = os.environ.get(f"{variable}_FILE")
    inline = tuple(t for t in os.environ.get(variable, "").split(",") if t)
    return (Path(path) if path else None), inline


@dataclass(frozen=True, slots=True)
class HttpIngestConfig:
    common: CommonConfig
    host: str
    port: int
    http: HttpLimits
    tokens: dict[str, tuple[Path | None, tuple[str, ...]]]  # by route realm: the file, and inline tokens
    max_age_seconds: float
    answer_within: float
    group_max_readings: int
    group_max_delay: float

    @classmethod
    def from_env(cls) -> HttpIngestConfig:
        tokens = {realm: tokens_of(realm) for realm in sorted({route.realm for route in ROUTES})}
        if not any(path or inline for path, inline in tokens.values()):
            names = ", ".join(f"{token_variable(realm)}_FILE" for realm in tokens)
            raise ConfigError(f"one of {names} (one token per line) is required")
        return cls(
            common=CommonConfig.from_env(INGEST_HTTP.name),
            host=env_str("PULSESTACK_HTTP_HOST", "0.0.0.0"),
            port=INGEST_HTTP.ops.from_env(),
            http=HttpLimits.from_env(),
            tokens=tokens,
            max_age_seconds=env_float("PULSESTACK_MAX_AGE", 30 * 86_400),
            # The Sigfox backend gives up after 10 s and retries; answer 503 well before that.
            answer_within=env_float("PULSESTACK_ANSWER_WITHIN", 7.0),
            # Readings grouped per RAW message: each message costs an fsync before its PubAck.
            group_max_readings=env_int("PULSESTACK_GROUP_MAX", 256),
            group_max_delay=env_float("PULSESTACK_GROUP_DELAY", 0.005),
        )
