"""Per-device rate limit: one misbehaving agent cannot spend the tenant's Graph write budget.

A token bucket per device, held in this process's memory: with several instances each one counts
on its own, so the effective limit is the setting times the instance count.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache

__all__ = ["DeviceRateLimiter", "device_limiter"]

# Enough for every device of a large tenant; a bucket evicted here has been idle longest, so it
# would have refilled anyway.
MAX_TRACKED_DEVICES = 200_000


class DeviceRateLimiter:
    """`per_minute` reports per device, refilled evenly, bursts up to `per_minute`."""

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_devices: int = MAX_TRACKED_DEVICES,
    ) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._max_devices = max_devices
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def acquire(self, device_id: str) -> int | None:
        """None when the report may go ahead; else the whole seconds until the next one may."""
        if self.per_minute <= 0:
            return None
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(device_id, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * self._rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[device_id] = (tokens, now)
            if len(self._buckets) > self._max_devices:
                self._buckets.popitem(last=False)
        if allowed:
            return None
        return max(1, math.ceil((1.0 - tokens) / self._rate))


@lru_cache(maxsize=4)
def device_limiter(per_minute: int) -> DeviceRateLimiter:
    """The process-wide limiter (settings are fixed for a worker's life, so there is one)."""
    return DeviceRateLimiter(per_minute)
