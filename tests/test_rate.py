"""The minimum-rate rule on a hand-driven clock: no waiting, every verdict computed."""

from __future__ import annotations

import pytest

from mirror.rate import RateFloor


class Clock:
    """A settable stand-in for the loop's clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_after_the_head_fails_one_window_later() -> None:
    """With no byte at all the verdict falls exactly one window after the start."""
    clock = Clock()
    floor = RateFloor(1000, 10, clock)
    assert 110.0 == floor.deadline()
    clock.now = 109.999
    assert not floor.too_slow()
    clock.now = 110.0
    assert floor.too_slow()


def test_a_trickle_is_caught_at_the_first_window() -> None:
    """One byte every 15 s (the issue's trickle) is under 2 KiB/s when the first window closes."""
    clock = Clock()
    floor = RateFloor(2048, 10, clock)
    clock.now += 0.5
    floor.feed(1)
    assert 110.0 == floor.deadline()
    clock.now = 110.0
    assert floor.too_slow()


def test_a_fast_body_moves_the_deadline_along() -> None:
    """Once a window's worth is in, the deadline is one window after the oldest byte needed."""
    clock = Clock()
    floor = RateFloor(100, 10, clock)  # 1000 bytes per 10 s
    clock.now = 101.0
    floor.feed(600)
    clock.now = 102.0
    floor.feed(600)
    # 1200 held; the 600 from 101 are still needed (600 alone is short), so 101 + 10.
    assert 111.0 == floor.deadline()
    clock.now = 105.0
    floor.feed(600)
    # Now the last two chunks hold 1200 on their own: the first can no longer decide.
    assert 112.0 == floor.deadline()
    clock.now = 111.5
    assert not floor.too_slow()


def test_a_slow_but_steady_origin_is_never_judged_too_slow() -> None:
    """Exactly the floor's rate, delivered every second for a minute, always passes."""
    clock = Clock()
    floor = RateFloor(2048, 10, clock)
    for _ in range(60):
        clock.now += 1.0
        floor.feed(2048)
        assert not floor.too_slow()


def test_a_burst_then_silence_fails_when_the_burst_leaves_the_window() -> None:
    """A big first chunk buys exactly one window from its arrival, no more."""
    clock = Clock()
    floor = RateFloor(10, 10, clock)
    clock.now = 103.0
    floor.feed(10_000)
    assert 113.0 == floor.deadline()
    clock.now = 113.0
    assert floor.too_slow()


def test_memory_stays_within_one_window_of_chunks() -> None:
    """Many tiny chunks above the rate keep only the samples a verdict can depend on."""
    clock = Clock()
    floor = RateFloor(10, 1, clock)  # 10 bytes per second
    for _ in range(100_000):
        clock.now += 0.001
        floor.feed(1)
    assert 10 >= len(floor._samples)
    assert not floor.too_slow()


def test_empty_reads_count_nothing() -> None:
    """A zero-byte read (the end of the body) changes no verdict."""
    clock = Clock()
    floor = RateFloor(1, 1, clock)
    floor.feed(0)
    assert 101.0 == floor.deadline()


@pytest.mark.parametrize(("rate", "window"), [(0, 1), (1, 0), (-1, 1)])
def test_a_floor_needs_a_positive_rate_and_window(rate: float, window: float) -> None:
    """A zero or negative rate or window is a programming error (config turns the floor off)."""
    with pytest.raises(ValueError, match="positive"):
        RateFloor(rate, window)
