"""Move poison messages back to the delivery queue once their cause is fixed.

Replayed reports still pass the run-state checks: one that a newer report has overtaken in the
meantime is skipped, never written over the newer state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared import timestamps
from shared.delivery import MESSAGE_SCHEMA
from shared.store import Storage

__all__ = ["ReplayResult", "replay"]

# Messages the host itself dead-lettered (its MaxDequeueCount) carry no reason of ours.
HOST_POISONED = "max_dequeue_count"
_HIDE_SECONDS = 60


@dataclass(frozen=True)
class ReplayResult:
    replayed: int
    kept: int
    by_reason: dict[str, int]


def _unwrap(content: str) -> tuple[str, dict[str, Any] | None]:
    """(reason, report message) for one poison message; malformed ones have no report."""
    try:
        data = json.loads(content)
    except ValueError:
        return "malformed_message", None
    if isinstance(data, dict) and data.get("schema") == MESSAGE_SCHEMA:
        return HOST_POISONED, data
    if isinstance(data, dict) and isinstance(data.get("report"), dict):
        report = data["report"]
        reason = str(data.get("reason") or "unknown")
        return reason, report if report.get("schema") == MESSAGE_SCHEMA else None
    return "malformed_message", None


def replay(
    storage: Storage, reasons: set[str] | None = None, dry_run: bool = False
) -> ReplayResult:
    """Re-enqueue every poison message whose reason is in `reasons` (all when None)."""
    replayed, kept, by_reason = 0, [], {}
    now = timestamps.version(datetime.now(UTC))
    while True:
        batch = list(
            storage.poison.receive_messages(max_messages=32, visibility_timeout=_HIDE_SECONDS)
        )
        if not batch:
            break
        for message in batch:
            reason, report = _unwrap(message.content)
            if report is None or (reasons is not None and reason not in reasons) or dry_run:
                kept.append((message, reason))
                continue
            # A fresh attempt budget: the cause was fixed, so the report starts over.
            storage.enqueue({**report, "attempt": 0, "acceptedAt": now})
            storage.poison.delete_message(message)
            replayed += 1
            by_reason[reason] = by_reason.get(reason, 0) + 1
    for message, reason in kept:
        storage.poison.update_message(message, visibility_timeout=0)
        if dry_run:
            by_reason[reason] = by_reason.get(reason, 0) + 1
    return ReplayResult(replayed, len(kept), by_reason)
