"""Gap arithmetic on its own: what the index says flowed, against what the buckets cover."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pulsestack.store.pulses import Gap, Point, gap_between
from pulsestack.store.rollups import spread


def point(period_end: int, index: int, counts: tuple[int, ...] = (1, 1, 1, 1), seq: int = 1) -> Point:
    return Point(period_end, period_end, seq, index, 900, counts)


def test_contiguous_readings_that_agree_leave_no_volume() -> None:
    assert gap_between(point(3600, 100), point(7200, 104)) == Gap(0, 3600, 3600, "adjustment")


def test_uncovered_interval_gets_the_missing_volume() -> None:
    # B covers [10800, 14400); A ended at 3600: two hours uncovered, 50 - 4 pulses in them.
    assert gap_between(point(3600, 100), point(14400, 150)) == Gap(46, 3600, 10800, "gap")


def test_negative_volume_is_a_boundary_adjustment() -> None:
    assert gap_between(point(3600, 100), point(14400, 102)) == Gap(-2, 3600, 3600, "adjustment")


def test_index_wrap_is_an_increase() -> None:
    assert gap_between(point(3600, 2**32 - 2), point(7200, 2)) == Gap(0, 3600, 3600, "adjustment")


def test_large_decrease_is_a_reset() -> None:
    assert gap_between(point(3600, 5000), point(7200, 10)) is None


def test_overlap_counts_only_buckets_after_the_earlier_reading() -> None:
    # B's first two buckets lie before A's end: only the last two (2 + 3) are new.
    b = Point(7200 + 1800, 9000, 2, 100 + 5, 900, (7, 9, 2, 3))
    assert gap_between(point(7200, 100), b) == Gap(0, 7200, 7200, "adjustment")


@given(start=st.integers(0, 10**6), length=st.integers(0, 3 * 86_400), volume=st.integers(-(10**6), 10**6))
def test_spread_keeps_the_volume_and_negates_exactly(start: int, length: int, volume: int) -> None:
    shares = spread(start, start + length, volume)
    assert sum(share for _, share in shares) == volume
    assert spread(start, start + length, -volume) == [(slot, -share) for slot, share in shares]
    assert all(slot % 900 == 0 for slot, _ in shares)
