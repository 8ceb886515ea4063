"""Move poison messages back to their destination's queue once their cause is fixed.

Replayed reports still pass the run-state checks: one that a newer report has overtaken in the
meantime is skipped, never written over the newer state. Nothing here creates a queue.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared import messages, timestamps
from shared.settings import QUEUES
from shared.store import Storage

__all__ = ["ReplayResult", "replay"]

_HIDE_SECONDS = 60


@dataclass(frozen=True)
class ReplayResult:
    replayed: int
    kept: int
    by_reason: dict[str, int]
    by_destination: dict[str, int] = field(default_factory=dict)


def replay(
    storage: Storage,
    reasons: set[str] | None = None,
    dry_run: bool = False,
    destinations: Iterable[str] | None = None,
) -> ReplayResult:
    """Re-enqueue every poison message whose reason is in `reasons` (all when None).

    `--dry-run` counts what would move and leaves every message where it was.
    """
    replayed, kept_count = 0, 0
    by_reason: dict[str, int] = {}
    by_destination: dict[str, int] = {}
    now = timestamps.version(datetime.now(UTC))
    for destination in destinations or QUEUES:
        poison = storage.queue(destination, poison=True)
        kept = []
        while True:
            batch = list(poison.receive_messages(max_messages=32, visibility_timeout=_HIDE_SECONDS))
            if not batch:
                break
            for message in batch:
                reason, report = messages.unwrap_poison(message.content)
                selected = report is not None and (reasons is None or reason in reasons)
                if not selected or dry_run:
                    kept.append(message)
                    if selected:
                        by_reason[reason] = by_reason.get(reason, 0) + 1
                        by_destination[destination] = by_destination.get(destination, 0) + 1
                    continue
                # A fresh attempt budget: the cause was fixed, so the report starts over.
                again = {k: v for k, v in report.items() if k not in ("slotAt", "lastReason")}
                again |= {"destination": destination, "attempt": 0, "acceptedAt": now}
                storage.enqueue(again)
                poison.delete_message(message)
                replayed += 1
                by_reason[reason] = by_reason.get(reason, 0) + 1
                by_destination[destination] = by_destination.get(destination, 0) + 1
        for message in kept:
            poison.update_message(message, visibility_timeout=0)
        kept_count += len(kept)
    return ReplayResult(replayed, kept_count, by_reason, by_destination)
