"""Pace Graph writes: Intune allows 200 writes per 20 s per app per tenant, across every instance.

`TokenBucket` paces one process. `SharedBudget` holds the budget across every instance the
platform scales out to: the next free write time and a "throttled until" gate, both rows of the
run-state table guarded by ETags. Its failure mode is a pause: when the table is slow or down,
`acquire` raises, the queue trigger fails, and the host retries the message later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from azure.core.exceptions import ResourceNotFoundError

from shared.store import write_if_unchanged

__all__ = ["BUDGET_PARTITION", "Pacer", "SharedBudget", "TokenBucket"]

_EPSILON = 1e-9
# Rows of ours in the run-state table; a script id (its partition key) is always a GUID.
BUDGET_PARTITION = "~graph-budget"
_GATE = "gate"
_PACE = "pace"
_HEADROOM = 0.95
_ETAG_RETRIES = 12


class Pacer(Protocol):
    def acquire(self, max_wait: float | None = None) -> bool: ...

    def throttled(self, seconds: float) -> None: ...


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
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def acquire(self, max_wait: float | None = None) -> bool:
        """Take one token, waiting for it; False when that would take longer than `max_wait`."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                pause = self._paused_until - now
                if pause <= 0 and self._tokens >= 1 - _EPSILON:  # rounding must not stall
                    self._tokens = max(self._tokens - 1, 0.0)
                    return True
                wait = pause if pause > 0 else (1 - self._tokens) / self.rate
            if max_wait is not None and waited + wait > max_wait:
                return False
            self._sleep(wait)
            waited += wait

    def throttled(self, seconds: float) -> None:
        """Graph said wait: no write from this process until then (it keeps counting meanwhile)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)


class SharedBudget:
    """The tenant-wide write budget, shared through the run-state table by every instance.

    One row holds the next free write time (GCRA: each write reserves the next 1/rate of
    time, so writes from all instances are spaced evenly); a second row is the 429 gate.
    """

    def __init__(
        self,
        table: Any,
        rate: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.table = table
        # 5% below the budget: a write reaches Graph a little after its reserved time, and a
        # late write must not push a 20 s window over.
        self.interval = 1.0 / (rate * _HEADROOM)
        self._clock = clock
        self._sleep = sleep

    def acquire(self, max_wait: float | None = None) -> bool:
        """Reserve one write time and wait for it; False when it lies beyond `max_wait`."""
        deadline = None if max_wait is None else self._clock() + max_wait
        while True:
            now = self._clock()
            gate = self._gate_wait(now)
            if gate > 0:
                if deadline is not None and now + gate > deadline:
                    return False
                self._sleep(min(gate, 1.0))
                continue
            at = self._reserve(now, deadline)
            if at is None:
                return False
            if at > now:
                self._sleep(at - now)
            # Another instance may have been throttled while this one waited: then this
            # reservation is given up and the write waits for the gate like every other.
            if self._gate_wait(self._clock()) <= 0:
                return True

    def throttled(self, seconds: float) -> None:
        """A 429 seen here closes the gate for every instance until its Retry-After has passed."""
        until = self._clock() + seconds
        for _ in range(_ETAG_RETRIES):
            row = self._read(_GATE)
            if row is not None and float(row.get("ThrottledUntil") or 0) >= until:
                return
            if self._write(row, _GATE, {"ThrottledUntil": until}):
                return

    def _gate_wait(self, now: float) -> float:
        row = self._read(_GATE)
        return 0.0 if row is None else float(row.get("ThrottledUntil") or 0) - now

    def _reserve(self, now: float, deadline: float | None) -> float | None:
        for _ in range(_ETAG_RETRIES):
            row = self._read(_PACE)
            at = max(float(row.get("Next") or 0) if row is not None else 0.0, now)
            if deadline is not None and at > deadline:
                return None
            if self._write(row, _PACE, {"Next": at + self.interval}):
                return at
        return None  # heavy contention: treat as no budget now

    def _read(self, key: str) -> Any | None:
        try:
            return self.table.get_entity(partition_key=BUDGET_PARTITION, row_key=key)
        except ResourceNotFoundError:
            return None

    def _write(self, row: Any | None, key: str, fields: dict[str, Any]) -> bool:
        entity = {"PartitionKey": BUDGET_PARTITION, "RowKey": key, **fields}
        return write_if_unchanged(self.table, row, entity)
