"""What an ingester knows about registered devices, kept current from the KV bucket.

Layout of the `registry` bucket:
- `members.<protocol>.<shard>`: the enabled devices whose number falls in that
  shard, as sorted big-endian uint64s. 1,024 shards keep each value far below
  NATS's 1 MiB payload limit even at 100 million devices.
- `keyver.<protocol>.<device>`: key version of a device whose key was rotated
  (absent means version 0).

In memory a shard is an `array('Q')` searched with bisect: 8 bytes per device,
so 10 million registered devices cost about 80 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable

import nats.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from pulsestack import metrics
from pulsestack.bus.topology import REGISTRY_BUCKET
from pulsestack.logs import get_logger
from pulsestack.service import sleep_or_stop
from pulsestack.wire.codecs import codec_of

SHARDS = 1024
# How long a watch may lag its bucket without receiving anything before it is replaced.
STALL_CHECK_SECONDS = 15.0
log = get_logger(__name__)


class WatchStalled(Exception):
    """The registry watch stopped delivering while the bucket moved on."""


async def _bucket_state(kv: KeyValue) -> tuple[int, int] | None:
    """The bucket's newest revision and how many values it holds; None when NATS cannot say now."""
    try:
        state = (await kv.status()).stream_info.state
    except Exception as exc:
        log.info("registry bucket status unavailable", error=str(exc))
        return None
    return int(state.last_seq), int(state.messages)


def device_number(protocol: str, device: str) -> int:
    """The uint64 a canonical id stands for, as its protocol's codec reads it."""
    return codec_of(protocol).number(device)


def shard_of(number: int) -> int:
    return number % SHARDS


def members_key(protocol: str, shard: int) -> str:
    return f"members.{protocol}.{shard}"


def keyver_key(protocol: str, device: str) -> str:
    return f"keyver.{protocol}.{device}"


def pack(numbers: Iterable[int]) -> bytes:
    values = array("Q", sorted(set(numbers)))
    if sys.byteorder == "little":
        values.byteswap()
    return values.tobytes()


def unpack(data: bytes) -> array[int]:
    values = array("Q")
    values.frombytes(data)
    if sys.byteorder == "little":
        values.byteswap()
    return values


class Membership:
    def __init__(self, protocols: Iterable[str]) -> None:
        self._shards: dict[str, list[array[int]]] = {p: [array("Q") for _ in range(SHARDS)] for p in protocols}
        self._key_versions: dict[tuple[str, str], int] = {}
        self._revision = 0  # the bucket's newest change applied
        self.ready = asyncio.Event()

    def contains(self, protocol: str, number: int) -> bool:
        shard = self._shards[protocol][number % SHARDS]
        i = bisect_left(shard, number)
        return i < len(shard) and shard[i] == number

    def key_version(self, protocol: str, device: str) -> int:
        return self._key_versions.get((protocol, device), 0)

    def count(self, protocol: str) -> int:
        return sum(len(s) for s in self._shards[protocol])

    def apply(self, key: str, value: bytes | None) -> None:
        """One KV entry (value None: deleted)."""
        kind, protocol, rest = key.split(".", 2)
        if protocol not in self._shards:
            return
        if kind == "members":
            self._shards[protocol][int(rest)] = unpack(value) if value else array("Q")
        elif kind == "keyver":
            if value:
                self._key_versions[(protocol, rest)] = int(value)
            else:
                self._key_versions.pop((protocol, rest), None)

    async def follow(self, kv: KeyValue, check_every: float = STALL_CHECK_SECONDS) -> None:
        """Loads the bucket, sets `ready`, then applies changes as they happen (seconds, no restart). Raises
        `WatchStalled` when the watch has fallen behind the bucket and received nothing for `check_every`:
        nats.py's ordered consumer can stop delivering without an error, and a device registered then would
        stay unknown to this ingester for good."""
        before_watch = await _bucket_state(kv)
        known_before_watch = before_watch[0] if before_watch else 0
        watcher = await kv.watchall()
        self._revision = 0  # a new watch delivers every key again
        # nats.py's end-of-initial-values marker (None) may come before the values: it is sent when the
        # server says nothing is pending, which it also says once it has pushed every value to the client. So
        # a load ends with the value that had nothing pending after it, and the marker counts only for a
        # bucket that held no value when the watch began (or one NATS could not describe).
        trust_marker = before_watch is None or before_watch[1] == 0
        applying = asyncio.create_task(self._apply(watcher, known_before_watch, trust_marker))
        try:
            seen, bucket = self._revision, known_before_watch
            while not applying.done():
                await asyncio.wait({applying}, timeout=check_every)
                if applying.done():
                    break
                if self._revision == seen and self._revision < bucket:
                    raise WatchStalled(f"registry watch stopped at revision {seen}, the bucket is at {bucket}")
                seen = self._revision
                now = await _bucket_state(kv)
                bucket = now[0] if now else bucket
            applying.result()
        finally:
            applying.cancel()
            await asyncio.gather(applying, return_exceptions=True)
            with contextlib.suppress(nats.errors.Error):  # a stalled watch's subscription may be gone
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _apply(self, watcher: KeyValue.KeyWatcher, known_before_watch: int, trust_marker: bool) -> None:
        loaded = False
        async for entry in watcher:
            if entry is None:
                if trust_marker and not loaded:
                    loaded = True
                    self._loaded(known_before_watch)
                continue
            deleted = entry.operation in ("DEL", "PURGE")
            self.apply(entry.key, None if deleted else entry.value)
            self._revision = entry.revision
            if loaded:
                self._publish_counts()
            elif entry.delta == 0:  # nothing pending after it: the bucket as it was when the watch began
                loaded = True
                self._loaded(known_before_watch)

    def _loaded(self, known_before_watch: int) -> None:
        """A watch's first load is complete: all the bucket held when the watch began is applied."""
        self._revision = max(self._revision, known_before_watch)
        self._publish_counts()
        self.ready.set()
        log.info("registry loaded", **{p: self.count(p) for p in self._shards})

    def _publish_counts(self) -> None:
        for protocol in self._shards:
            metrics.registry_devices.labels(protocol).set(self.count(protocol))


async def keep_following(js: JetStreamContext, membership: Membership, stop: asyncio.Event) -> None:
    """Follows the registry bucket for the life of the service, re-watching after any failure."""
    while not stop.is_set():
        try:
            kv = await js.key_value(REGISTRY_BUCKET)
            await membership.follow(kv)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("registry watch interrupted, retrying", error=str(exc))
        await sleep_or_stop(stop, 2.0)
