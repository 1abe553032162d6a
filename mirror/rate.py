"""
The minimum transfer rate: tell a trickle (one byte every few seconds, forever) from a slow origin.

Pure and clock-injected, so the rule is tested without waiting; :mod:`mirror.fetch` feeds it the
chunks of one response body and reads with :meth:`RateFloor.deadline` as the timeout.

The rule: from the moment the floor starts (the response head has arrived), every sliding
``window`` seconds must bring at least ``rate * window`` bytes. The first verdict falls one window
after the start, so a body that arrives at once is never judged, and a real but slow origin only
has to keep up the average, not every instant.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RateFloor:
    """
    Bytes per second over a sliding window, with the moment it would first fall short.

    Args:
        rate: the floor in bytes per second (positive).
        window: the span in seconds the rate is averaged over (positive).
        clock: monotonic seconds; the fetcher passes the event loop's clock.
    """

    def __init__(
        self, rate: float, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or window <= 0:
            raise ValueError("rate and window must be positive")
        self.rate = rate
        self.window = window
        self._clock = clock
        self._need = rate * window
        self._start = clock()
        # (arrival time, bytes), oldest first; only the samples the verdict can still depend on.
        self._samples: deque[tuple[float, int]] = deque()
        self._held = 0  # bytes in _samples

    def feed(self, size: int) -> None:
        """Count ``size`` bytes that have just arrived."""
        if size <= 0:
            return
        self._samples.append((self._clock(), size))
        self._held += size
        # A sample whose removal still leaves the floor's worth of newer bytes can never decide
        # a verdict again (later samples only add), so memory stays within one window's chunks.
        while self._samples and self._held - self._samples[0][1] >= self._need:
            self._held -= self._samples.popleft()[1]

    def deadline(self) -> float:
        """
        Return the clock time at which, with nothing more arriving, the rate falls short.

        With ``held`` the newest samples holding at least the floor's worth, that is one window
        after the oldest of them arrived (then it leaves the window); else one window after start.
        """
        if self._held >= self._need and self._samples:
            return self._samples[0][0] + self.window
        return self._start + self.window

    def too_slow(self) -> bool:
        """Tell whether the floor has been broken by now."""
        return self._clock() >= self.deadline()
