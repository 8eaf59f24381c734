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


class DeviceKeys:
    """The derived keys of the devices heard from lately, each with the key version it was derived for.

    Deriving costs an HMAC per datagram; a device's retransmissions and next readings reuse its key. The
    caller passes the version the registry gives now, so a rotated key is derived afresh the first time
    the new version is asked for, and the old key is never used again. Two generations of `generation`
    devices each, the older dropped whole: at most about 15 MB, and no per-entry bookkeeping. A fleet reporting
    hourly hits it with retransmissions and the readings of devices that report more often.
    """

    def __init__(self, master: bytes, protocol: str, generation: int = 32_768) -> None:
        self._master = master
        self._protocol = protocol
        self._generation = generation
        self._recent: dict[str, tuple[int, bytes]] = {}
        self._older: dict[str, tuple[int, bytes]] = {}

    def get(self, device: str, version: int) -> bytes:
        cached = self._recent.get(device)
        if cached is not None and cached[0] == version:
            return cached[1]
        cached = self._older.get(device)
        if cached is None or cached[0] != version:
            cached = (version, derive(self._master, self._protocol, device, version))
        if len(self._recent) >= self._generation:
            self._older, self._recent = self._recent, {}
        self._recent[device] = cached
        return cached[1]
