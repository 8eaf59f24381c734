"""Device keys by diversification: key = HMAC-SHA256(master secret, protocol, device id, key version).

Ingesters then hold one master secret instead of millions of keys; only the
exceptions (rotated keys) travel through the registry bucket. This is how
smart-meter and LoRaWAN join servers keep per-device keys without a key table.
"""

from __future__ import annotations

import hashlib
import hmac

from pulsestack.config import ConfigError, secret

_LABEL = b"pulsestack/device-key/v1"


def load_master_key() -> bytes:
    """The master secret: 64 hex digits in `PULSESTACK_DEVICE_MASTER_KEY` or its `_FILE`."""
    text = secret("PULSESTACK_DEVICE_MASTER_KEY")
    try:
        master = bytes.fromhex(text)
    except ValueError as exc:
        raise ConfigError("PULSESTACK_DEVICE_MASTER_KEY must be hex") from exc
    if len(master) < 32:
        raise ConfigError("PULSESTACK_DEVICE_MASTER_KEY must hold at least 32 bytes")
    return master


def derive(master: bytes, protocol: str, device: str, version: int = 0) -> bytes:
    message = b"\x00".join((_LABEL, protocol.encode(), device.encode(), str(version).encode()))
    return hmac.digest(master, message, hashlib.sha256)
