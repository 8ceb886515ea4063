"""What to do with a mapped report: derive its run-state id, write it, and decide on the outcome."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from shared.graph import GraphClient, GraphResult, Outcome
from shared.mapping import DeviceState

__all__ = ["DeliveryResult", "backoff_delay", "deliver", "run_state_id"]


def run_state_id(template: str, script_id: str, device_id: str) -> str:
    """Server-side only: a device never chooses which run state it writes."""
    return template.replace("{scriptId}", script_id).replace("{deviceId}", device_id)


def backoff_delay(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter, so a fleet retrying together spreads out."""
    return random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))  # noqa: S311 - jitter


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    result: GraphResult
    attempts: int
    run_state_id: str

    @property
    def outcome(self) -> Outcome:
        return self.result.outcome


def deliver(
    graph: GraphClient,
    *,
    script_id: str,
    device_id: str,
    state: DeviceState,
    template: str,
    attempts: int = 1,
    max_wait: timedelta = timedelta(0),
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryResult:
    """Write one state, retrying transient outcomes while the total wait stays within `max_wait`.

    Queue mode calls this with one attempt and schedules retries itself; sync mode keeps the retry
    short because an agent is waiting on the HTTP response.
    """
    key = run_state_id(template, script_id, device_id)
    body = state.patch_body()
    budget = max_wait.total_seconds()
    attempt = 0
    while True:
        attempt += 1
        result = graph.patch_run_state(script_id, key, body)
        if result.outcome is not Outcome.TRANSIENT or attempt >= attempts:
            return DeliveryResult(result, attempt, key)
        delay = (
            result.retry_after if result.retry_after is not None else backoff_delay(attempt, 0.5, 4)
        )
        if delay > budget:
            return DeliveryResult(result, attempt, key)
        budget -= delay
        sleep(delay)
