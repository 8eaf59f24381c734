"""The CLI's NATS connection, configured like the services' (NATS_URL, PULSESTACK_NATS_USER, password file)."""

from __future__ import annotations

import nats
from nats.aio.client import Client as NATS

from pulsestack.config import CommonConfig


async def connect() -> NATS:
    config = CommonConfig.from_env("cli")
    return await nats.connect(config.nats_servers, user=config.nats_user, password=config.nats_password)
