"""Pace Graph writes: Intune allows about 10 writes per second per app per tenant."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]

_EPSILON = 1e-9


class TokenBucket:
    """A token bucket shared by the threads of one process; capacity bounds the burst."""

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        # No saved-up burst by default: any window of W seconds sees at most rate * W + 1 writes.
        self.capacity = capacity if capacity is not None else 1.0
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, waiting for it; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1 - _EPSILON:  # float rounding must not stall a waiter
                    self._tokens = max(self._tokens - 1, 0.0)
                    return waited
                shortfall = (1 - self._tokens) / self.rate
            self._sleep(shortfall)
            waited += shortfall
