"""The compressed test clock: every process given the same setting reads the same time."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulsestack.clock import WALL, Clock
from pulsestack.config import ConfigError, env_clock


@given(epoch=st.floats(0, 2**32), rate=st.floats(1e-3, 1e6))
def test_a_clock_passed_on_by_its_setting_reads_the_same(epoch: float, rate: float) -> None:
    clock = Clock.starting_at(epoch, rate)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PULSESTACK_TEST_CLOCK", clock.setting())
        assert env_clock() == clock
    before = time.time()
    now = clock.now()
    after = time.time()
    assert epoch + (before - clock.wall_epoch) * rate <= now <= epoch + (after - clock.wall_epoch) * rate
    # What it showed at a given wall time, as the ingesters ask with their one read of the wall clock.
    assert clock.at(clock.wall_epoch) == epoch and clock.at(before) <= now <= clock.at(after)


def test_without_the_setting_it_is_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PULSESTACK_TEST_CLOCK", raising=False)
    assert env_clock() is WALL and not WALL.compressed
    assert abs(WALL.now() - time.time()) < 1
    assert WALL.at(1_800_000_000.5) == 1_800_000_000.5


@pytest.mark.parametrize("value", ["soon", "1 2", "1 2 0", "1 2 -5"])
def test_a_malformed_setting_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PULSESTACK_TEST_CLOCK", value)
    with pytest.raises(ConfigError, match="PULSESTACK_TEST_CLOCK"):
        env_clock()
