"""`python -m shared status`: the on-call view, read-only, on the same store code as the bridge.

Queue depth and the age of the oldest message per destination, poison counts by reason, the 429
gate, this 20 s window's writes against the budget, and per script the devices by state.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from shared import messages
from shared.pacing import BUDGET_PARTITION, SharedBudget
from shared.runstate_table import PREFIX
from shared.settings import QUEUES, Settings
from shared.store import Storage

__all__ = ["collect", "render"]

# Peeking shows at most 32 messages: reasons are counted over those, the total is the queue's.
_PEEK = 32


def collect(storage: Storage, settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    queues = {}
    for name, queue_name in QUEUES.items():
        queue, poison = storage.queue(name), storage.queue(name, poison=True)
        oldest = next(iter(queue.peek_messages(max_messages=1)), None)
        peeked = poison.peek_messages(max_messages=_PEEK)
        reasons = Counter(messages.unwrap_poison(m.content)[0] for m in peeked)
        queues[name] = {
            "queue": queue_name,
            "enabled": name in settings.destinations,
            "depth": queue.get_queue_properties().approximate_message_count,
            "oldestAgeSeconds": (
                round((now - oldest.inserted_on).total_seconds()) if oldest is not None else None
            ),
            "poisoned": poison.get_queue_properties().approximate_message_count,
            "poisonedByReason": dict(reasons),
        }
    budget = SharedBudget(
        storage.table,
        settings.graph_writes_per_second,
        refresh_interval=settings.refresh_interval.total_seconds(),
    ).snapshot()
    if budget["throttledUntil"] is not None:
        budget["throttledUntil"] = datetime.fromtimestamp(budget["throttledUntil"], UTC).isoformat()
    return {"queues": queues, "budget": budget, "scripts": _devices(storage)}


def _devices(storage: Storage) -> dict[str, dict[str, dict[str, int]]]:
    """Per script: devices by last accepted state, and by last delivered state per destination."""
    scripts: dict[str, dict[str, Counter[str]]] = {}
    columns = ["PartitionKey", "AcceptedDetectionState"]
    columns += [f"{prefix}DeliveredState" for prefix in PREFIX.values()]
    for row in storage.table.query_entities(
        "PartitionKey ne @budget", parameters={"budget": BUDGET_PARTITION}, select=columns
    ):
        script = scripts.setdefault(row["PartitionKey"], {})
        if row.get("AcceptedDetectionState"):
            script.setdefault("accepted", Counter())[row["AcceptedDetectionState"]] += 1
        for name, prefix in PREFIX.items():
            state = row.get(f"{prefix}DeliveredState")
            if state:
                script.setdefault(name, Counter())[state] += 1
    return {s: {k: dict(v) for k, v in views.items()} for s, views in sorted(scripts.items())}


def render(status: dict[str, Any]) -> str:
    """The same facts as text, one line each, for a terminal."""
    lines = ["queues:"]
    for name, q in status["queues"].items():
        age = "-" if q["oldestAgeSeconds"] is None else f"{q['oldestAgeSeconds']} s"
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(q["poisonedByReason"].items())) or "-"
        flag = "" if q["enabled"] else " (destination not enabled)"
        lines.append(
            f"  {name:<6} {q['queue']}: {q['depth']} queued, oldest {age}; "
            f"poison {q['poisoned']} ({reasons}){flag}"
        )
    b = status["budget"]
    gate = "open" if b["gateOpen"] else f"closed until {b['throttledUntil']}"
    lines.append(f"429 gate: {gate}")
    lines.append(f"writes this 20 s window: {b['writesThisWindow']} of {b['windowBudget']}")
    hours = b["refreshAfterSeconds"] / 3600
    lines.append(f"unchanged states refreshed after: {hours:.1f} h (the refresh age bar)")
    lines.append("devices by state, per script:")
    for script, views in status["scripts"].items():
        for view, counts in views.items():
            text = ", ".join(f"{state} {n}" for state, n in sorted(counts.items()))
            lines.append(f"  {script} {view}: {text}")
    if not status["scripts"]:
        lines.append("  (no reports yet)")
    return "\n".join(lines)
