"""What to do with a mapped report: derive its run-state id, write it, and decide on the outcome."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import timestamps
from shared.graph import GraphClient, GraphResult, Outcome
from shared.ids import canonical_guid
from shared.mapping import DeviceState
from shared.pacing import Pacer
from shared.settings import Settings
from shared.store import Claim, Storage
from shared.telemetry import age_ms, emit

__all__ = [
    "DeliveryResult",
    "QueueOutcome",
    "backoff_delay",
    "deliver",
    "on_queue_message",
    "process_message",
    "queue_message",
    "run_state_id",
    "version_key",
]


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
    pacer: Pacer | None = None,
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
        if pacer is not None:
            pacer.acquire()
        result = graph.patch_run_state(script_id, key, body)
        if pacer is not None and result.status == 429:
            pacer.throttled(result.retry_after if result.retry_after is not None else 2.0)
        if result.outcome is not Outcome.TRANSIENT or attempt >= attempts:
            return DeliveryResult(result, attempt, key)
        delay = (
            result.retry_after if result.retry_after is not None else backoff_delay(attempt, 0.5, 4)
        )
        if delay > budget:
            return DeliveryResult(result, attempt, key)
        budget -= delay
        sleep(delay)


# ---- queue mode -------------------------------------------------------------------------------

MESSAGE_SCHEMA = 1
# Retry-After or backoff beyond this is capped: the message stays in the queue either way.
MAX_DELAY_SECONDS = 3600
BUSY_RETRY_SECONDS = 2.0
# How long one execution may wait for write budget before it defers the message instead.
BUDGET_WAIT_SECONDS = 3.0


def version_key(moment: datetime) -> str:
    """Fixed-width UTC text, so versions compare correctly as strings in the run-state table."""
    return timestamps.version(moment)


def queue_message(
    report_id: str, script_id: str, device_id: str, state: DeviceState, received_at: datetime
) -> dict[str, Any]:
    return {
        "schema": MESSAGE_SCHEMA,
        "reportId": report_id,
        "scriptId": script_id,
        "deviceId": device_id,
        "version": version_key(state.last_state_update),
        "detectionState": state.detection_state.value,
        "acceptedAt": timestamps.version(received_at),
        "attempt": 0,
        "state": state.patch_body(),
    }


def poison_message(
    message: dict[str, Any], reason: str, result: GraphResult | None, **extra: Any
) -> dict[str, Any]:
    """What an operator needs to act: the report, why it stopped, and Graph's own words."""
    graph = None
    if result is not None:
        graph = {
            "status": result.status,
            "code": result.error_code,
            "requestId": result.request_id,
            "clientRequestId": result.client_request_id,
        }
    return {
        "report": message,
        "reason": reason,
        "graph": graph,
        "poisonedAt": timestamps.version(datetime.now(UTC)),
        **extra,
    }


@dataclass(frozen=True, slots=True)
class QueueOutcome:
    """What happened to one queue message; `event` is the telemetry event name."""

    event: str
    reason: str
    message: dict[str, Any] = field(default_factory=dict)
    result: GraphResult | None = None
    delay: float = 0.0


def _accepted_at(message: dict[str, Any]) -> datetime:
    return timestamps.from_version(message["acceptedAt"])


def _parse(text: str) -> dict[str, Any]:
    message = json.loads(text)
    if not isinstance(message, dict) or message.get("schema") != MESSAGE_SCHEMA:
        raise ValueError("not a bridge message")
    for key in ("scriptId", "deviceId"):
        canonical_guid(message[key])
    if not isinstance(message["version"], str) or not isinstance(message["attempt"], int):
        raise ValueError("bad version or attempt")
    _accepted_at(message)
    if "state" not in message and "statePayload" not in message:
        raise ValueError("no state")
    return message


def process_message(
    text: str,
    *,
    graph: GraphClient,
    storage: Storage,
    pacer: Pacer,
    settings: Settings,
    now: datetime | None = None,
) -> QueueOutcome:
    """Deliver one queued report once; retries are new messages with a visibility delay.

    A storage failure raises, so the host retries the message (and after maxDequeueCount moves
    it to the poison queue): nothing accepted is dropped.
    """
    try:
        message = _parse(text)
    except (ValueError, KeyError, TypeError):
        storage.enqueue(
            poison_message({"raw": text[:4096]}, "malformed_message", None), poison=True
        )
        return QueueOutcome("poisoned", "malformed_message")
    script_id, device_id, version = message["scriptId"], message["deviceId"], message["version"]
    runstates = storage.runstates
    claim = runstates.claim(script_id, device_id, version, settings.delivery_lease.total_seconds())
    if claim.claim in (Claim.SUPERSEDED, Claim.DELIVERED):
        storage.forget_payload(message)
        reason = "superseded" if claim.claim is Claim.SUPERSEDED else "duplicate"
        return QueueOutcome("ignored", reason, message)
    if claim.claim is Claim.BUSY:
        # Usually the other write ends within a second; the lease only matters after a crash.
        delay = min(max(claim.wait, 1.0), BUSY_RETRY_SECONDS)
        storage.enqueue(message, delay)
        return QueueOutcome("retried", "busy", message, delay=delay)

    if not pacer.acquire(max_wait=BUDGET_WAIT_SECONDS):
        # Waiting longer would bill this execution for idling: hand the pair back and come later.
        runstates.finish(
            script_id, device_id, version, claim.owner,
            delivered=False, outcome="retried", reason="budget",
        )  # fmt: skip
        delay = random.uniform(1.0, 5.0)  # noqa: S311 - spread, not secrecy
        storage.enqueue(message, delay)
        return QueueOutcome("retried", "budget", message, delay=delay)
    state = storage.load_state(message)
    key = run_state_id(settings.run_state_id_template, script_id, device_id)
    result = graph.patch_run_state(script_id, key, state)
    if result.outcome is Outcome.DELIVERED:
        runstates.finish(
            script_id, device_id, version, claim.owner,
            delivered=True, outcome="delivered", reason=result.reason,
        )  # fmt: skip
        storage.forget_payload(message)
        return QueueOutcome("delivered", result.reason, message, result)
    if result.outcome is Outcome.PERMANENT:
        storage.enqueue(poison_message(message, result.reason, result), poison=True)
        runstates.finish(
            script_id, device_id, version, claim.owner,
            delivered=False, outcome="poisoned", reason=result.reason,
        )  # fmt: skip
        return QueueOutcome("poisoned", result.reason, message, result)

    if result.status == 429:
        # Graph keeps counting while a client is throttled: every instance waits it out.
        pacer.throttled(result.retry_after if result.retry_after is not None else 2.0)
    attempt = message["attempt"] + 1
    # After a timeout or a dropped connection Graph may still apply the write: keep the lease
    # until it runs out, so no other version of this pair is written in the meantime.
    keep_lease = result.reason in ("timeout", "connection_error")
    runstates.finish(
        script_id, device_id, version, claim.owner,
        delivered=False, outcome="retried", reason=result.reason, keep_lease=keep_lease,
    )  # fmt: skip
    age = (now or datetime.now(UTC)) - _accepted_at(message)
    if attempt >= settings.max_attempts or age > settings.max_age:
        poison = poison_message(message, "retries_exhausted", result, lastReason=result.reason)
        storage.enqueue(poison, poison=True)
        return QueueOutcome("poisoned", "retries_exhausted", message, result)
    delay = result.retry_after if result.retry_after is not None else backoff_delay(attempt, 2, 300)
    delay = min(delay, MAX_DELAY_SECONDS)
    storage.enqueue({**message, "attempt": attempt}, delay)
    return QueueOutcome("retried", result.reason, {**message, "attempt": attempt}, result, delay)


def on_queue_message(text: str, dequeue_count: int = 1) -> QueueOutcome:
    """The queue trigger's body: process with the process-wide clients and report the outcome."""
    from shared.runtime import get_bridge

    bridge = get_bridge()
    outcome = process_message(
        text,
        graph=bridge.graph,
        storage=bridge.storage,
        pacer=bridge.pacer,
        settings=bridge.settings,
    )
    message, result = outcome.message, outcome.result
    attempt = message.get("attempt")
    if result is not None and outcome.event != "retried" and isinstance(attempt, int):
        attempt += 1  # the Graph attempt that decided this outcome, 1-based as in sync mode
    emit(
        outcome.event,
        level=logging.INFO if outcome.event in ("delivered", "ignored") else logging.WARNING,
        reportId=message.get("reportId"),
        scriptId=message.get("scriptId"),
        deviceId=message.get("deviceId"),
        detectionState=message.get("detectionState"),
        outcome=outcome.event,
        reason=outcome.reason,
        attempt=attempt,
        dequeueCount=dequeue_count,
        graphStatus=result.status if result else None,
        graphRequestId=result.request_id if result else None,
        clientRequestId=result.client_request_id if result else None,
        latencyMs=round(result.elapsed * 1000, 1) if result else None,
        retryDelayMs=round(outcome.delay * 1000) if outcome.delay else None,
        ageMs=age_ms(message.get("acceptedAt")),
    )
    return outcome
