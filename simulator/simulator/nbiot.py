"""The NB-IoT side: datagrams from many source ports, acks awaited, retransmissions with back-off."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pulsestack.wire import nbiot
from pulsestack.wire.errors import CodecError
from simulator.fleet import Meter, SentReading

RETRANSMIT_FLAG = 0x01


@dataclass(slots=True)
class _Pending:
    meter: Meter
    reading: SentReading
    socket: int
    attempts: int
    deadline: float


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, client: NbiotClient, index: int) -> None:
        self.client = client
        self.index = index
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not an asyncio.DatagramTransport subclass, but has its methods.
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client.on_ack(self.index, data)


class NbiotClient:
    def __init__(
        self,
        target: tuple[str, int],
        *,
        sockets: int = 16,
        ack_timeout: float = 2.0,
        retransmissions: int = 5,
    ) -> None:
        self.target = target
        self.ack_timeout = ack_timeout
        self.retransmissions = retransmissions
        self._sockets: list[_Socket] = [_Socket(self, i) for i in range(sockets)]
        self._pending: dict[tuple[str, int], _Pending] = {}
        # An ack names only seq; per socket and seq there are few candidates to check its tag against.
        self._by_seq: dict[tuple[int, int], list[tuple[str, int]]] = {}
        self._keys: dict[int, bytes] = {}
        self.sent = 0
        self.datagrams = 0
        self.retransmitted = 0
        self.acked: list[SentReading] = []
        self.acked_duplicate = 0
        self.gave_up: list[SentReading] = []
        self.bad_acks = 0
        self._timer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            transport, _ = await loop.create_datagram_endpoint(lambda s=sock: s, local_addr=("0.0.0.0", 0))  # type: ignore[misc]
            sock.transport = transport
        self._timer = asyncio.create_task(self._retransmit_loop())

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def send(self, meter: Meter, reading: SentReading) -> None:
        sock = meter.number % len(self._sockets)
        key = (meter.device, reading.seq)
        self._pending[key] = _Pending(meter, reading, sock, 0, time.monotonic() + self.ack_timeout)
        self._by_seq.setdefault((sock, reading.seq), []).append(key)
        self.sent += 1
        self._transmit(meter, reading, sock, 0)

    def _transmit(self, meter: Meter, reading: SentReading, sock: int, flags: int) -> None:
        frame = nbiot.encode(
            meter.key, device=meter.number, seq=reading.seq, period_end=reading.period_end,
            bucket_seconds=900, counts=reading.counts, index=reading.index, battery_mv=3600, flags=flags,
        )
        transport = self._sockets[sock].transport
        assert transport is not None
        transport.sendto(frame, self.target)
        self.datagrams += 1

    def on_ack(self, sock: int, data: bytes) -> None:
        if len(data) != nbiot.ACK_SIZE:
            self.bad_acks += 1
            return
        seq = int.from_bytes(data[2:6], "big")
        for key in self._by_seq.get((sock, seq), ()):
            pending = self._pending[key]
            try:
                _, status = nbiot.decode_ack(pending.meter.key, data)
            except CodecError:
                continue
            self._forget(key)
            self.acked.append(pending.reading)
            if status == nbiot.ACK_DUPLICATE:
                self.acked_duplicate += 1
            return
        self.bad_acks += 1  # late ack of a reading already acked, or not authentic

    def _forget(self, key: tuple[str, int]) -> None:
        pending = self._pending.pop(key)
        siblings = self._by_seq[(pending.socket, key[1])]
        siblings.remove(key)
        if not siblings:
            del self._by_seq[(pending.socket, key[1])]

    async def _retransmit_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for key, p in list(self._pending.items()):
                if p.deadline > now:
                    continue
                if p.attempts >= self.retransmissions:
                    self._forget(key)
                    self.gave_up.append(p.reading)
                    continue
                p.attempts += 1
                p.deadline = now + self.ack_timeout * 2**p.attempts
                self.retransmitted += 1
                self._transmit(p.meter, p.reading, p.socket, RETRANSMIT_FLAG)

    async def settle(self, timeout: float) -> None:
        """Waits until every reading is acked or given up, or `timeout`."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._timer:
            self._timer.cancel()
        for sock in self._sockets:
            if sock.transport:
                sock.transport.close()
