"""The fast load generator: one process per protocol, frames and requests computed before the clock starts.

    python -m simulator.loadgen SPEC.json

SPEC names a saved `ReadingBatch` (one protocol) and how to send it. The process

1. loads the batch and pre-computes everything it will send: NB-IoT datagrams signed with each
   meter's derived key and, in `ack` mode, the exact ack bytes each one should get back (an ack is
   then matched and authenticated by one dict lookup); Sigfox callbacks and LoRaWAN webhooks (half as
   ChirpStack events, half as The Things Stack messages, under the spec's path) as complete HTTP/1.1 requests;
2. prints `ready N` and waits for a line `go T0` on stdin (T0 on the CLOCK_MONOTONIC shared by all
   processes of the machine, so several generators start together);
3. sends reading i at T0 + send_at[i] (open loop for NB-IoT: a slow server does not slow the
   sender), printing `progress SENT ACKED` twice a second;
4. NB-IoT `ack` mode: retransmits (flag bit 0, re-signed) after `ack_timeout` doubling each time, up to
   `retransmissions` times, like a device; `fire` mode sends once and expects nothing (the rsyslog
   peer). Callbacks: `connections` keep-alive connections, one callback in flight each; a non-2xx answer
   or a broken connection is retried after each of `retry_delays`, like the network servers;
5. writes SPEC.out: a JSON line of counters and its own CPU use, then one status byte per reading
   (0 not acked, 1 acked stored, 2 acked as duplicate) and prints `done`.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import resource
import select
import socket
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pulsestack import keys
from pulsestack.wire import lorawan, nbiot, sigfox
from simulator.batch import ReadingBatch
from simulator.callbacks import lorawan_request

NOT_ACKED, ACKED, ACKED_DUPLICATE = 0, 1, 2
GAVE_UP = 3  # internal to the NB-IoT sender; written out as NOT_ACKED
RETRANSMISSION = 0x01  # NB-IoT flags bit 0
_GAVE_UP_AS_NOT_ACKED = bytes([0, 1, 2, 0, *range(4, 256)])


@dataclass
class Spec:
    batch: str
    out: str
    mode: str = "ack"  # nbiot: ack | fire; callbacks: always answered
    host: str = "127.0.0.1"
    port: int = 2204
    path: str = sigfox.CALLBACK_PATH  # LoRaWAN: the webhooks' base, lorawan.CALLBACK_BASE
    token: str = ""
    master_key: str = ""  # hex
    sockets: int = 64
    ack_timeout: float = 2.0
    retransmissions: int = 5
    connections: int = 128
    retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0)
    settle_timeout: float = 120.0
    receive_buffer: int = 8 * 1024 * 1024

    @classmethod
    def load(cls, path: Path) -> Spec:
        data = json.loads(path.read_text())
        data["retry_delays"] = tuple(data.get("retry_delays", (1.0, 2.0, 4.0)))
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


@dataclass
class Result:
    protocol: str = ""
    mode: str = ""
    readings: int = 0
    sent: int = 0  # readings sent at least once
    datagrams: int = 0
    requests: int = 0
    retransmitted: int = 0
    acked: int = 0
    acked_duplicate: int = 0
    gave_up: int = 0
    late_or_unknown_acks: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    prepare_seconds: float = 0.0
    send_seconds: float = 0.0  # from T0 to the last first transmission
    max_send_lag: float = 0.0  # how far behind schedule the sender fell at worst (s)
    settle_seconds: float = 0.0
    cpu_prepare: float = 0.0
    cpu_send: float = 0.0  # user + system CPU seconds from T0 to the last first transmission
    cpu_total: float = 0.0
    max_rss: int = 0  # bytes


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _progress(sent: int, acked: int) -> None:
    sys.stdout.write(f"progress {sent} {acked}\n")
    sys.stdout.flush()


def _wait_for_go() -> float:
    line = sys.stdin.readline().split()
    if not line or line[0] != "go":
        raise SystemExit("expected 'go T0' on stdin")
    return float(line[1])


# ---------------------------------------------------------------------------------------------- NB-IoT

class NbiotSender:
    def __init__(self, spec: Spec, batch: ReadingBatch) -> None:
        self.spec = spec
        self.batch = batch
        self.target = (spec.host, spec.port)
        self.ack = spec.mode == "ack"
        master = bytes.fromhex(spec.master_key) if spec.master_key else b""
        self.keys: dict[int, bytes] = {}
        n = len(batch)
        self.frames: list[bytes] = [b""] * n
        self.expected: dict[bytes, int] = {}
        self.status = bytearray(n)
        counts = batch.counts
        for i in range(n):
            number = batch.number[i]
            key = self.keys.get(number)
            if key is None:
                key = keys.derive(master, nbiot.PROTOCOL, str(number)) if master else bytes(32)
                self.keys[number] = key
            seq = batch.seq[i]
            self.frames[i] = nbiot.encode(
                key, device=number, seq=seq, period_end=batch.period_end[i], bucket_seconds=900,
                counts=counts[4 * i:4 * i + 4], index=batch.index[i], battery_mv=3600,
            )
            if self.ack:
                self.expected[nbiot.encode_ack(key, seq, nbiot.ACK_STORED)] = i
        self.socks = []
        for _ in range(spec.sockets):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            if self.ack:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, spec.receive_buffer)
                try:
                    s.setsockopt(socket.SOL_SOCKET, 33, spec.receive_buffer)  # SO_RCVBUFFORCE (root)
                except OSError:
                    pass
            self.socks.append(s)
        self.result = Result(protocol=nbiot.PROTOCOL, mode=spec.mode, readings=n)
        self.outstanding = 0  # sent, neither acked nor given up

    def run(self, t0: float) -> None:
        spec, batch, r = self.spec, self.batch, self.result
        frames, send_at, numbers = self.frames, batch.send_at, batch.number
        socks, nsocks, target = self.socks, len(self.socks), self.target
        n = len(frames)
        ack_timeout = spec.ack_timeout
        first_deadlines: deque[tuple[float, int]] = deque()  # (deadline, i) in send order
        retries: list[tuple[float, int, int]] = []  # heap of (deadline, i, attempts so far)
        poller = select.epoll()
        by_fd = {s.fileno(): s for s in socks}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        expected, status = self.expected, self.status
        i = 0
        next_progress = next_retry_check = 0.0
        settle_deadline = float("inf")
        while True:
            now = time.monotonic()
            elapsed = now - t0
            if i < n and send_at[i] <= elapsed:
                lag = elapsed - send_at[i]
                if lag > r.max_send_lag:
                    r.max_send_lag = lag
                while i < n and send_at[i] <= elapsed:
                    try:
                        socks[numbers[i] % nsocks].sendto(frames[i], target)
                    except BlockingIOError:
                        break  # socket buffer full: again on the next turn
                    r.datagrams += 1
                    if self.ack:
                        first_deadlines.append((now + ack_timeout, i))
                        self.outstanding += 1
                    i += 1
                if i == n:
                    r.send_seconds = elapsed
                    r.cpu_send = _cpu() - r.cpu_send
                    settle_deadline = now + spec.settle_timeout
            if self.ack:
                for fd, _ in poller.poll(0.001 if i < n else 0.02):
                    sock = by_fd[fd]
                    while True:
                        try:
                            data = sock.recv(64)
                        except BlockingIOError:
                            break
                        j = expected.pop(data, None)
                        if j is None or status[j]:
                            r.late_or_unknown_acks += 1
                            continue
                        status[j] = ACKED_DUPLICATE if data[6] == nbiot.ACK_DUPLICATE else ACKED
                        self.outstanding -= 1
                if now >= next_retry_check:
                    next_retry_check = now + 0.05
                    self._retransmit(now, first_deadlines, retries)
            elif i < n:
                time.sleep(0.0005)
            if now >= next_progress:
                next_progress = now + 0.5
                _progress(i, self._acked())
            if i == n and self.outstanding <= 0:
                break
            if now > settle_deadline:
                break
        r.sent = i
        r.settle_seconds = max(0.0, time.monotonic() - t0 - r.send_seconds)
        status[:] = status.translate(_GAVE_UP_AS_NOT_ACKED)
        r.acked = n - status.count(NOT_ACKED)
        r.acked_duplicate = status.count(ACKED_DUPLICATE)
        _progress(i, r.acked)
        poller.close()
        for s in socks:
            s.close()

    def _acked(self) -> int:
        return len(self.status) - self.status.count(NOT_ACKED) - self.status.count(GAVE_UP)

    def _retransmit(self, now: float, first: deque[tuple[float, int]], retries: list[tuple[float, int, int]]) -> None:
        """Retransmits what waited too long for its ack; gives up after the last retransmission."""
        status, spec, r = self.status, self.spec, self.result
        while first and first[0][0] <= now:
            _, i = first.popleft()
            if not status[i]:
                heapq.heappush(retries, (now, i, 0))
        while retries and retries[0][0] <= now:
            _, i, attempts = heapq.heappop(retries)
            if status[i]:
                continue
            if attempts >= spec.retransmissions:
                status[i] = GAVE_UP
                r.gave_up += 1
                self.outstanding -= 1
                continue
            attempts += 1
            frame = self._resign(i, RETRANSMISSION)
            try:
                self.socks[self.batch.number[i] % len(self.socks)].sendto(frame, self.target)
            except BlockingIOError:
                pass
            r.datagrams += 1
            r.retransmitted += 1
            heapq.heappush(retries, (now + spec.ack_timeout * 2**attempts, i, attempts))

    def _resign(self, i: int, flags: int) -> bytes:
        b = self.batch
        key = self.keys[b.number[i]]
        frame = nbiot.encode(
            key, device=b.number[i], seq=b.seq[i], period_end=b.period_end[i], bucket_seconds=900,
            counts=b.counts[4 * i:4 * i + 4], index=b.index[i], battery_mv=3600, flags=flags,
        )
        for status in (nbiot.ACK_STORED, nbiot.ACK_DUPLICATE):
            self.expected[nbiot.encode_ack(key, b.seq[i], status)] = i
        return frame


# ---------------------------------------------------------------------------------------------- callbacks

class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:stop if stop > 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        if b"\r\nconnection: close" in head and self.transport is not None:
            self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


def _sigfox_request(b: ReadingBatch, i: int, payload: bytes) -> tuple[str, bytes]:
    return "", (
        f'{{"device":"{b.number[i]:X}","time":{b.device_time[i]},"seqNumber":{b.seq[i]},'
        f'"data":"{payload.hex()}","deviceTypeId":"simulated","station":"0A1B","rssi":-112.0,"snr":12.5}}'
    ).encode()


def _lorawan_request(b: ReadingBatch, i: int, payload: bytes) -> tuple[str, bytes]:
    path, body = lorawan_request(b.number[i], b.seq[i], b.period_end[i], payload)
    return path, orjson.dumps(body)


# A batch's reading i -> (the path after the spec's, the JSON body); the v1 payload is given.
_REQUESTS = {sigfox.PROTOCOL: _sigfox_request, lorawan.PROTOCOL: _lorawan_request}


class CallbackSender:
    def __init__(self, spec: Spec, batch: ReadingBatch) -> None:
        self.spec = spec
        self.batch = batch
        n = len(batch)
        head = (f"HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
                f"Authorization: Bearer {spec.token}\r\nContent-Type: application/json\r\n")
        request_of = _REQUESTS[batch.protocol]
        self.requests: list[bytes] = [b""] * n
        counts = batch.counts
        for i in range(n):
            payload = sigfox.encode_payload(index=batch.index[i], counts=list(counts[4 * i:4 * i + 4]),
                                            battery_mv=3600)
            path, body = request_of(batch, i, payload)
            self.requests[i] = (f"POST {spec.path}{path} {head}Content-Length: {len(body)}\r\n\r\n".encode()
                                + body)
        self.status = bytearray(n)
        self.statuses: Counter[int] = Counter()
        self.result = Result(protocol=batch.protocol, mode="ack", readings=n)
        self._cursor = 0
        self._retry: deque[tuple[int, int]] = deque()  # (i, attempt) ready to go again
        self._wake: asyncio.Event | None = None
        self._in_retry = 0

    async def run(self, t0: float) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.t0 = t0
        workers = [asyncio.create_task(self._worker()) for _ in range(self.spec.connections)]
        progress = asyncio.create_task(self._report())
        try:
            await asyncio.wait_for(asyncio.gather(*workers), timeout=self.batch.duration + self.spec.settle_timeout)
        except TimeoutError:
            pass
        progress.cancel()
        r = self.result
        r.sent = min(self._cursor, len(self.batch))
        r.settle_seconds = loop.time() - t0 - r.send_seconds
        r.acked = sum(1 for s in self.status if s)
        r.acked_duplicate = self.status.count(ACKED_DUPLICATE)
        r.gave_up = sum(1 for s in self.status if not s) - (len(self.batch) - r.sent)
        r.statuses = {str(k): v for k, v in sorted(self.statuses.items())}
        _progress(r.sent, r.acked)

    async def _report(self) -> None:
        while True:
            _progress(min(self._cursor, len(self.batch)), len(self.status) - self.status.count(NOT_ACKED))
            await asyncio.sleep(0.5)

    def _next(self) -> tuple[int, int] | None:
        if self._retry:
            return self._retry.popleft()
        if self._cursor < len(self.batch):
            i = self._cursor
            self._cursor += 1
            if self._cursor == len(self.batch):
                self.result.send_seconds = time.monotonic() - self.t0
                self.result.cpu_send = _cpu() - self.result.cpu_send
            return i, 0
        return None

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        send_at, r = self.batch.send_at, self.result
        while True:
            job = self._next()
            if job is None:
                if self._in_retry == 0:
                    break
                assert self._wake is not None
                self._wake.clear()
                await self._wake.wait()
                continue
            i, attempt = job
            if attempt == 0:
                delay = self.t0 + send_at[i] - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    r.max_send_lag = max(r.max_send_lag, -delay)
            try:
                if conn is None or conn.closed:
                    transport, conn = await loop.create_connection(_Connection, self.spec.host, self.spec.port)
                    transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                r.requests += 1
                code, body = await asyncio.wait_for(conn.request(self.requests[i]), 10.0)
            except (OSError, TimeoutError):
                code, body = 0, b""
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
            self.statuses[code] += 1
            if 200 <= code < 300:
                if b'"duplicate"' in body:
                    self.status[i] = ACKED_DUPLICATE
                elif b'"stored"' in body:
                    self.status[i] = ACKED
                continue  # a 202 (quarantined) is final too: a retry would not help
            if 400 <= code < 500:
                continue  # the backend does not retry a 4xx
            if attempt < len(self.spec.retry_delays):
                self._in_retry += 1
                loop.call_later(self.spec.retry_delays[attempt], self._requeue, i, attempt + 1)

    def _requeue(self, i: int, attempt: int) -> None:
        self._in_retry -= 1
        self._retry.append((i, attempt))
        assert self._wake is not None
        self._wake.set()


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str]) -> int:
    spec_path = Path(argv[0])
    spec = Spec.load(spec_path)
    started, cpu0 = time.monotonic(), _cpu()
    batch = ReadingBatch.load(Path(spec.batch))
    sender: NbiotSender | CallbackSender
    sender = NbiotSender(spec, batch) if batch.protocol == nbiot.PROTOCOL else CallbackSender(spec, batch)
    result = sender.result
    result.prepare_seconds = time.monotonic() - started
    result.cpu_prepare = _cpu() - cpu0
    print(f"ready {len(batch)}", flush=True)
    t0 = _wait_for_go()
    result.cpu_send = _cpu()  # turned into a difference when the last reading is sent
    cpu_start = result.cpu_send
    if isinstance(sender, NbiotSender):
        sender.run(t0)
    else:
        import uvloop

        uvloop.run(sender.run(t0))
    if not result.send_seconds:  # stopped before sending everything
        result.cpu_send = _cpu() - result.cpu_send
    result.cpu_total = _cpu() - cpu_start
    result.max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = Path(spec.out)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(json.dumps(asdict(result)).encode() + b"\n")
        f.write(bytes(sender.status))
    os.replace(tmp, out)
    print("done", flush=True)
    return 0


def load_result(path: Path) -> tuple[dict[str, Any], bytes]:
    with open(path, "rb") as f:
        header = json.loads(f.readline())
        return header, f.read()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
