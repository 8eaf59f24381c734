"""The network servers' side (the Sigfox backend, LoRaWAN servers' HTTP integrations): callbacks with their
bearer token, retried after a failure as the servers do."""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from pulsestack.wire import lorawan, sigfox
from simulator.fleet import Meter, SentReading, reception_offset

# A meter's reading -> (the URL path after the client's base, the JSON body).
Request = Callable[[Meter, SentReading], tuple[str, dict[str, Any]]]


def _payload(reading: SentReading) -> bytes:
    return sigfox.encode_payload(index=reading.index, counts=list(reading.counts), battery_mv=3600)


def sigfox_callback(meter: Meter, reading: SentReading) -> tuple[str, dict[str, Any]]:
    return "", {
        "device": meter.device, "time": reading.device_time, "seqNumber": reading.seq,
        "data": _payload(reading).hex(), "deviceTypeId": "simulated", "station": "0A1B", "rssi": -112.0,
        "snr": 12.5,
    }


def lorawan_request(number: int, seq: int, period_end: int, payload: bytes) -> tuple[str, dict[str, Any]]:
    """Half the meters are on a ChirpStack network, half on The Things Stack; the uplink is received within
    the quarter hour after its last bucket."""
    received = period_end + reception_offset(number)
    if number % 2:
        return lorawan.SERVER_PATHS[lorawan.TTS], lorawan.tts_uplink(number, seq, received, payload)
    event = f"{lorawan.SERVER_PATHS[lorawan.CHIRPSTACK]}?event=up"  # ChirpStack names the event in the URL
    return event, lorawan.chirpstack_uplink(number, seq, received, payload)


def lorawan_uplink(meter: Meter, reading: SentReading) -> tuple[str, dict[str, Any]]:
    return lorawan_request(meter.number, reading.seq, reading.period_end, _payload(reading))


class CallbackClient:
    def __init__(self, url: str, token: str, request: Request, *, concurrency: int = 64,
                 retry_delays: tuple[float, ...] = (1, 2, 4), host: str | None = None, ca_file: str | None = None):
        self.url = url
        self.token = token
        self.request = request
        self.host = host  # Host header and TLS server name when `url` names an address, not the host
        self._tls: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.retry_delays = retry_delays  # the backend's 1, 2 and 4 minutes, compressed
        self._limit = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.acked: list[SentReading] = []
        self.acked_duplicate = 0
        self.gave_up: list[SentReading] = []

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10))

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def send(self, meter: Meter, reading: SentReading) -> None:
        self.sent += 1
        task = asyncio.create_task(self._deliver(meter, reading))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, meter: Meter, reading: SentReading) -> None:
        path, body = self.request(meter, reading)
        headers = {"Authorization": f"Bearer {self.token}", **({"Host": self.host} if self.host else {})}
        for delay in (0.0, *self.retry_delays):
            if delay:
                await asyncio.sleep(delay)
            assert self._session is not None
            try:
                async with self._limit, self._session.post(self.url + path, json=body, headers=headers, ssl=self._tls,
                                                           server_hostname=self.host) as response:
                    self.requests += 1
                    self.statuses[response.status] += 1
                    if 200 <= response.status < 300:
                        answer = await response.json()
                        if answer.get("status") in ("stored", "duplicate"):
                            self.acked.append(reading)
                            self.acked_duplicate += answer["status"] == "duplicate"
                        return
            except (aiohttp.ClientError, TimeoutError):
                self.statuses[0] += 1
        self.gave_up.append(reading)

    async def settle(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._session:
            await self._session.close()
