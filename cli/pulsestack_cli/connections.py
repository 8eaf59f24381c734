"""The CLI's NATS connection, configured like the services' (NATS_URL, PULSESTACK_NATS_USER, password file)."""

from __future__ import annotations

import os

import nats
from nats.aio.client import Client as NATS

from pulsestack.config import CommonConfig, secret


async def connect(*, system: bool = False) -> NATS:
    """The account user's connection, or with `system` the system account user's (server-wide requests).

    The system user is PULSESTACK_NATS_SYSTEM_USER with PULSESTACK_NATS_SYSTEM_PASSWORD (or its _FILE); without
    it, the account user is tried, and the server's "no answer" tells what is missing.
    """
    config = CommonConfig.from_env("cli")
    user, password = config.nats_user, config.nats_password
    if system and (system_user := os.environ.get("PULSESTACK_NATS_SYSTEM_USER")):
        user, password = system_user, secret("PULSESTACK_NATS_SYSTEM_PASSWORD", "")
    return await nats.connect(config.nats_servers, user=user, password=password)
