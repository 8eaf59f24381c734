"""`Lifecycle` alone (pulsestack/service.py): what a service opened is closed in the reverse order of opening,
whether it stopped or failed, and the work it ran beside is cancelled; no process, no server."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulsestack.service import Lifecycle


def opened(closed: list[str], name: str, is_async: bool) -> object:
    if is_async:
        async def close_async() -> None:
            await asyncio.sleep(0)
            closed.append(name)
        return close_async
    return lambda: closed.append(name)


@given(parts=st.lists(st.booleans(), max_size=8), fails=st.booleans())
def test_parts_close_in_reverse_order_of_opening_whether_the_service_stops_or_fails(
        parts: list[bool], fails: bool) -> None:
    closed: list[str] = []

    async def serve() -> None:
        async with Lifecycle("unit") as life:
            for i, is_async in enumerate(parts):
                life.on_close(opened(closed, f"part{i}", is_async))  # type: ignore[arg-type]
            if fails:
                raise RuntimeError("the service failed")

    if fails:
        with pytest.raises(RuntimeError, match="the service failed"):
            asyncio.run(serve())
    else:
        asyncio.run(serve())
    assert closed == [f"part{i}" for i in reversed(range(len(parts)))]


def test_a_part_that_fails_to_close_does_not_keep_the_earlier_ones_open() -> None:
    closed: list[str] = []

    def broken() -> None:
        raise OSError("socket already gone")

    async def serve() -> None:
        async with Lifecycle("unit") as life:
            life.on_close(lambda: closed.append("nats"))
            life.on_close(broken)

    with pytest.raises(OSError, match="socket already gone"):
        asyncio.run(serve())
    assert closed == ["nats"]


def test_work_beside_the_service_is_cancelled_before_what_it_uses_closes() -> None:
    events: list[str] = []

    async def report() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("report cancelled")
            raise

    async def serve() -> asyncio.Task[None]:
        async with Lifecycle("unit") as life:
            life.on_close(lambda: events.append("pool closed"))
            task = life.beside(report())
            await asyncio.sleep(0)
        return task

    task = asyncio.run(serve())
    assert task.cancelled()
    assert events == ["report cancelled", "pool closed"]
