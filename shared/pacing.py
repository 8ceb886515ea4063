"""The Graph write budget: Intune allows 200 writes per 20 s per app per tenant, across instances.

One row of the run-state table holds the next free write time (GCRA: each write reserves the next
1/rate of time, so writes from every instance are spaced evenly), the 429 gate ("throttled
until") and the fleet's refresh age bar (`shared.policy.refresh_after`), so one read tells all
three. Its failure mode is a pause: when the table is slow or down a reservation raises, the
queue trigger fails, and the host retries the message later.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from shared import policy
from shared.runstate_table import ETAG_RETRIES, write_if_unchanged

__all__ = ["BUDGET_PARTITION", "MAX_RETRY_AFTER", "WINDOW_SECONDS", "SharedBudget", "Slot"]

# Rows of ours in the run-state table; a script id (its partition key) is always a GUID.
BUDGET_PARTITION = "~graph-budget"
_PACE = "pace"
# 5% below the budget: a write reaches Graph a little after its reserved time, and a late write
# must not push a 20 s window over.
_HEADROOM = 0.95
WINDOW_SECONDS = 20.0
# A write that slept this long for its slot reads the 429 gate again before it goes.
GATE_RECHECK = 1.0
# A Retry-After is honoured up to an hour: a far date or 1e308 must not close the gate for good.
MAX_RETRY_AFTER = 3600.0


def _count(row: Any | None, at: float) -> dict[str, Any]:
    """Reservations per 20 s window (Intune's own window), for `python -m shared status`."""
    start = float(row.get("WindowStart") or 0) if row is not None else 0.0
    if at - start >= WINDOW_SECONDS:
        return {"WindowStart": at, "WindowCount": 1}
    return {"WindowCount": int(row.get("WindowCount") or 0) + 1 if row is not None else 1}


@dataclass(frozen=True, slots=True)
class Slot:
    """A reserved write time (`at`), or none and how long until one could be had, and why."""

    at: float | None
    wait: float
    reason: str = "budget"


class SharedBudget:
    """The tenant-wide write budget, shared through the run-state table by every instance."""

    def __init__(
        self,
        table: Any,
        rate: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        *,
        refresh_interval: float = 0.0,
    ) -> None:
        self.table = table
        self.interval = 1.0 / (rate * _HEADROOM)
        self.refresh_interval = refresh_interval
        # The refresh age bar as this process last read it: claims use it to skip refreshes that
        # are not due without asking the budget row (the row's own value decides at reservation).
        self.refresh_after = refresh_interval
        self._clock = clock
        self._sleep = sleep

    def reserve(
        self,
        horizon: float,
        *,
        book_ahead: bool = False,
        refresh_rank: float | None = None,
        last_try: bool = True,
    ) -> Slot:
        """Reserve the next write time if it lies within `horizon` seconds.

        With `book_ahead`, a later time is reserved too (a queued change comes back for it);
        without, nothing is reserved then. A refresh (`refresh_rank`: the pair's age as
        `shared.policy.refresh_rank` ranks it) reserves only if it reaches the refresh age bar,
        and one that finds the budget taken raises the bar. A closed gate reserves nothing.
        """
        for _ in range(ETAG_RETRIES):
            now = self._clock()
            row = self._read()
            gate = 0.0 if row is None else float(row.get("ThrottledUntil") or 0) - now
            if gate > 0:
                return Slot(None, gate, "throttled")
            free = float(row.get("Next") or 0) if row is not None else now
            bar = self.refresh_after
            if refresh_rank is not None and refresh_rank < bar:
                return Slot(None, bar - refresh_rank, "not_due")
            at = max(free, now)
            if at - now > horizon and not book_ahead:
                if refresh_rank is not None and last_try:
                    self._raise_bar(row, bar)
                return Slot(None, at - now)
            fields = {"Next": at + self.interval, **_count(row, at)}
            # Time the budget stood unused lowers the bar: refreshes nearer the floor are due.
            idle = max(now - free, 0.0) / self.interval
            lowered = policy.refresh_after(bar, self.refresh_interval, idle_slots=idle)
            if lowered != bar:
                fields["RefreshAfter"] = lowered
            if self._write(row, fields):
                return Slot(at, at - now)
        return Slot(None, self.interval)  # heavy contention: no budget right now

    def _raise_bar(self, row: Any | None, bar: float) -> None:
        """One try: the bar is a shared estimate, and a lost race only means another raised it."""
        raised = policy.refresh_after(bar, self.refresh_interval, missed=1)
        if raised != bar and self._write(row, {"RefreshAfter": raised}):
            self.refresh_after = raised

    def acquire(self, max_wait: float) -> Slot:
        """Reserve a write time within `max_wait` and sleep until it (sync mode, the doctor)."""
        slot = self.reserve(max_wait)
        if slot.at is not None:
            return self.sleep_until(slot.at) or slot
        return slot

    def sleep_until(self, at: float) -> Slot | None:
        """Sleep until a reserved time; None to write then, or the gate a 429 closed meanwhile.

        After a long wait the gate is read again (one call): another instance may have been
        throttled since, and a write into a closed gate only meets another 429. A shorter wait
        writes at most that long into a gate closed behind it.
        """
        wait = at - self._clock()
        if wait > 0:
            self._sleep(wait)
        if wait >= GATE_RECHECK:
            gate = self.gate()
            if gate > 0:
                return Slot(None, gate, "throttled")
        return None

    def gate(self) -> float:
        """Seconds until the 429 gate opens (0 when open)."""
        row = self._read()
        return 0.0 if row is None else max(float(row.get("ThrottledUntil") or 0) - self._clock(), 0)

    def snapshot(self) -> dict[str, Any]:
        """The gate and this window's reservations, as `python -m shared status` shows them."""
        row = self._read() or {}
        now = self._clock()
        until = float(row.get("ThrottledUntil") or 0)
        start = float(row.get("WindowStart") or 0)
        current = now - start < WINDOW_SECONDS
        return {
            "gateOpen": until <= now,
            "throttledUntil": until if until > now else None,
            "writesThisWindow": int(row.get("WindowCount") or 0) if current else 0,
            "windowBudget": round(WINDOW_SECONDS / self.interval, 1),
            "refreshAfterSeconds": round(self._bar(row)),
        }

    def throttled(self, seconds: float) -> float:
        """A 429 seen here closes the gate for every instance until its Retry-After has passed.

        Returns the wait actually applied (capped at an hour).
        """
        seconds = min(max(seconds, 0.0), MAX_RETRY_AFTER)
        until = self._clock() + seconds
        for _ in range(ETAG_RETRIES):
            row = self._read()
            if row is not None and float(row.get("ThrottledUntil") or 0) >= until:
                return seconds
            # Writes booked inside the closed window would only meet more 429s: push them out.
            fields = {"ThrottledUntil": until}
            if row is None or float(row.get("Next") or 0) < until:
                fields["Next"] = until
            if self._write(row, fields):
                return seconds
        return seconds

    def _bar(self, row: Any | None) -> float:
        stored = float(row.get("RefreshAfter") or 0) if row is not None else 0.0
        return policy.refresh_after(stored, self.refresh_interval)

    def _read(self) -> Any | None:
        try:
            row = self.table.get_entity(partition_key=BUDGET_PARTITION, row_key=_PACE)
        except ResourceNotFoundError:
            row = None
        self.refresh_after = self._bar(row)
        return row

    def _write(self, row: Any | None, fields: dict[str, Any]) -> bool:
        entity = {"PartitionKey": BUDGET_PARTITION, "RowKey": _PACE, **fields}
        return write_if_unchanged(self.table, row, entity) is not None
