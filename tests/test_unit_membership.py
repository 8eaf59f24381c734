"""`Membership` alone (pulsestack/registry/membership.py): which device numbers are members after any shard
values and updates, how shards are packed, key versions; and following a real KV bucket of its own (no
service)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from pulsestack.registry.membership import (
    SHARDS,
    Membership,
    WatchStalled,
    device_number,
    keyver_key,
    members_key,
    pack,
    shard_of,
    unpack,
)
from tests.helpers import eventually

numbers = st.integers(0, 2**64 - 1)
# Numbers that share a few shards, so shards hold several members and neighbours that are not.
crowded = st.builds(lambda shard, k: shard + k * SHARDS, st.sampled_from([0, 1, 1023]), st.integers(0, 2**53))


@given(st.lists(numbers | crowded))
def test_a_packed_shard_is_its_sorted_distinct_numbers_big_endian(values: list[int]) -> None:
    packed = pack(values)
    assert list(unpack(packed)) == sorted(set(values))
    assert [int.from_bytes(packed[i:i + 8], "big") for i in range(0, len(packed), 8)] == sorted(set(values))


def load(membership: Membership, protocol: str, values: set[int]) -> None:
    """Shard values as the registry writes them."""
    for shard in {shard_of(n) for n in values}:
        membership.apply(members_key(protocol, shard), pack(n for n in values if shard_of(n) == shard))


@given(members=st.sets(numbers | crowded, max_size=60), others=st.sets(numbers | crowded, max_size=60))
def test_exactly_the_packed_numbers_are_members(members: set[int], others: set[int]) -> None:
    membership = Membership(["nbiot", "sigfox"])
    load(membership, "nbiot", members)
    assert all(membership.contains("nbiot", n) for n in members)
    assert not any(membership.contains("nbiot", n) for n in others - members)
    assert not any(membership.contains("sigfox", n) for n in members)
    assert membership.count("nbiot") == len(members) and membership.count("sigfox") == 0


@given(before=st.sets(crowded, max_size=40), after=st.sets(crowded, max_size=40))
def test_a_shard_update_replaces_the_shard_and_a_delete_empties_it(before: set[int], after: set[int]) -> None:
    membership = Membership(["nbiot"])
    load(membership, "nbiot", before)
    for shard in {shard_of(n) for n in before | after}:
        value = pack(n for n in after if shard_of(n) == shard)
        membership.apply(members_key("nbiot", shard), value or None)  # an emptied shard's key is deleted
    assert {n for n in before | after if membership.contains("nbiot", n)} == after
    assert membership.count("nbiot") == len(after)


def test_key_versions_default_to_zero_and_follow_updates_and_deletes() -> None:
    membership = Membership(["sigfox"])
    assert membership.key_version("sigfox", "1A2B") == 0
    membership.apply(keyver_key("sigfox", "1A2B"), b"3")
    assert membership.key_version("sigfox", "1A2B") == 3 and membership.key_version("sigfox", "1A2C") == 0
    membership.apply(keyver_key("sigfox", "1A2B"), None)
    assert membership.key_version("sigfox", "1A2B") == 0


def test_entries_of_a_protocol_not_followed_are_ignored() -> None:
    membership = Membership(["nbiot"])
    membership.apply(members_key("sigfox", 5), pack([5]))
    membership.apply(keyver_key("sigfox", "5"), b"1")
    assert membership.count("nbiot") == 0


@given(st.integers(0, 2**64 - 1))
def test_device_ids_are_decimal_for_nbiot_and_hex_for_sigfox(number: int) -> None:
    assert device_number("nbiot", str(number)) == number
    assert device_number("sigfox", f"{number:X}") == number


NewBucket = Callable[[], Awaitable[KeyValue]]
Follow = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


@pytest.fixture
async def new_bucket(servers_nc: NATS) -> AsyncIterator[NewBucket]:
    """KV buckets of the test's own, with the registry's history of one value per key; deleted after it."""
    js = servers_nc.jetstream()
    names: list[str] = []

    async def create() -> KeyValue:
        names.append(f"unit_registry_{uuid.uuid4().hex[:10]}")
        return await js.create_key_value(bucket=names[-1], history=1)

    yield create
    for name in names:
        await js.delete_key_value(name)


@pytest.fixture
async def follow() -> AsyncIterator[Follow]:
    """Runs a follower beside the test; cancelled after it."""
    tasks: list[asyncio.Task[None]] = []

    def start(following: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        tasks.append(asyncio.create_task(following))
        return tasks[-1]

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_following_a_bucket_loads_it_then_applies_changes(new_bucket: NewBucket, follow: Follow) -> None:
    kv = await new_bucket()
    await kv.put(members_key("nbiot", 7), pack([7, 7 + SHARDS]))
    await kv.put(keyver_key("nbiot", "7"), b"2")
    membership = Membership(["nbiot"])
    follow(membership.follow(kv))
    await asyncio.wait_for(membership.ready.wait(), 10)
    assert membership.contains("nbiot", 7 + SHARDS) and membership.key_version("nbiot", "7") == 2
    await kv.put(members_key("nbiot", 7), pack([7]))
    await kv.delete(keyver_key("nbiot", "7"))

    async def changed() -> bool:
        return not membership.contains("nbiot", 7 + SHARDS) and membership.key_version("nbiot", "7") == 0

    await eventually(changed, timeout=10)
    assert membership.contains("nbiot", 7)
    await kv.delete(members_key("nbiot", 7))

    async def emptied() -> bool:
        return membership.count("nbiot") == 0

    await eventually(emptied, timeout=10)


class StallingBucket:
    """A real bucket whose watches the test can silence, as an ordered consumer that stops delivering
    without an error does."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.watchers: list[KeyValue.KeyWatcher] = []

    async def status(self) -> KeyValue.BucketStatus:
        return await self.kv.status()

    async def watchall(self) -> KeyValue.KeyWatcher:
        watcher = await self.kv.watchall()
        self.watchers.append(watcher)
        return watcher

    async def silence(self) -> None:
        await self.watchers[-1]._sub.unsubscribe()


async def test_a_watch_that_stops_delivering_is_given_up_and_a_new_one_catches_up(
        new_bucket: NewBucket, follow: Follow) -> None:
    kv = await new_bucket()
    bucket = StallingBucket(kv)
    await kv.put(members_key("nbiot", 7), pack([7]))
    # The bucket's newest revision no watch delivers: a delete marker removed, as `purge_deletes` does.
    await kv.put(members_key("nbiot", 9), pack([9]))
    await kv.delete(members_key("nbiot", 9))
    await kv.purge_deletes(olderthan=0)
    membership = Membership(["nbiot"])
    following = follow(membership.follow(bucket, check_every=0.3))  # type: ignore[arg-type]
    await asyncio.wait_for(membership.ready.wait(), 10)
    await asyncio.sleep(1.5)
    assert not following.done(), "an idle watch that has everything is no stall"
    await bucket.silence()
    await kv.put(members_key("nbiot", 8), pack([8]))
    with pytest.raises(WatchStalled):
        await asyncio.wait_for(following, 5)
    follow(membership.follow(bucket, check_every=0.3))  # type: ignore[arg-type]

    async def caught_up() -> bool:
        return membership.contains("nbiot", 8) and membership.contains("nbiot", 7)

    await eventually(caught_up, timeout=10)


class EarlyMarker:
    """A watch that yields nats.py's end-of-initial-values marker before the values, as nats.py does when the
    server has pushed every value before the watch asked how many were pending."""

    def __init__(self, watcher: KeyValue.KeyWatcher) -> None:
        self.watcher = watcher
        self.marked = self.values_started = False

    def __aiter__(self) -> EarlyMarker:
        return self

    async def __anext__(self) -> KeyValue.Entry | None:
        if not self.marked:
            self.marked = True
            return None
        if not self.values_started:
            self.values_started = True
            await asyncio.sleep(0.2)  # the values still on their way, as they are over a network
        entry = await self.watcher.__anext__()
        while entry is None:  # the watch's own marker, after the values
            entry = await self.watcher.__anext__()
        return entry

    async def stop(self) -> None:
        await self.watcher.stop()  # type: ignore[no-untyped-call]


class EarlyMarkerBucket(StallingBucket):
    async def watchall(self) -> KeyValue.KeyWatcher:
        return EarlyMarker(await super().watchall())  # type: ignore[return-value]


async def test_ready_means_loaded_even_when_the_marker_comes_before_the_values(
        new_bucket: NewBucket, follow: Follow) -> None:
    full, empty = await new_bucket(), await new_bucket()
    for shard in range(40):
        await full.put(members_key("nbiot", shard), pack([shard, shard + SHARDS]))
    for kv, expected in ((full, 80), (empty, 0)):
        membership = Membership(["nbiot"])
        follow(membership.follow(EarlyMarkerBucket(kv)))  # type: ignore[arg-type]
        await asyncio.wait_for(membership.ready.wait(), 10)
        assert membership.count("nbiot") == expected, "ready before the bucket's values were applied"
