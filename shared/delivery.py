"""Deliver accepted reports to one destination: claim, budget, write, settle.

Written once for every destination (`shared.destinations` holds what differs). Every message
ends: delivered, ignored, or poisoned within `BRIDGE_MAX_ATTEMPTS` tries, counting the host's own
redeliveries and every wait for a busy pair, the 429 gate or write budget. A message that waits
comes back when the wait is over (a lease's end, the gate's opening, its reserved budget slot)
instead of polling.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared import messages
from shared.destinations.base import Destination, Item, Written
from shared.outcomes import CallResult, Outcome
from shared.pacing import MAX_RETRY_AFTER, SharedBudget, Slot
from shared.policy import SLOT_LATENESS, Claim, books_ahead, refresh_retry
from shared.runstate_table import ClaimResult, Row
from shared.settings import BUDGET_WAIT_SECONDS, Settings
from shared.store import Storage
from shared.telemetry import age_ms, emit

__all__ = [
    "Delivery",
    "QueueOutcome",
    "backoff_delay",
    "emit_outcome",
]

# Messages drained beside the trigger's own stay hidden this long while their batch is written.
_DRAIN_VISIBILITY = 120
# Retry-After absent on a 429: Graph's own guidance is a short back-off.
_DEFAULT_THROTTLE = 2.0


def backoff_delay(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with full jitter, so a fleet retrying together spreads out."""
    return random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))  # noqa: S311 - jitter


@dataclass(frozen=True, slots=True)
class QueueOutcome:
    """What happened to one queued report: `outcome` is also its telemetry event's name."""

    outcome: str
    reason: str
    message: dict[str, Any] = field(default_factory=dict)
    result: CallResult | None = None
    delay: float = 0.0


class Delivery:
    """One destination's delivery, with the process's storage, write budget and settings."""

    def __init__(
        self,
        destination: Destination,
        storage: Storage,
        budget: SharedBudget,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.destination = destination
        self.name = destination.name
        self.storage = storage
        self.budget = budget
        self.settings = settings
        self._clock = clock
        self._sleep = sleep

    # ---- queue mode ---------------------------------------------------------------------------

    def process(self, text: str, dequeue_count: int = 1) -> list[QueueOutcome]:
        """Deliver one queued message (and, for a batching destination, what waits behind it)."""
        try:
            message = messages.parse(text, self.name)
        except messages.MalformedMessage:
            raw = {"raw": text[:4096], "destination": self.name}
            self.storage.enqueue(messages.poison(raw, "malformed_message"), poison=True)
            return [QueueOutcome("poisoned", "malformed_message", raw)]
        tries = message["attempt"] + max(dequeue_count, 1)
        if tries > self.settings.max_attempts:
            last = message.get("lastReason") or "redelivered"
            return [self._poison(message, "retries_exhausted", None, lastReason=last)]
        if not self.destination.ordered:
            return self._unordered(message)
        return [self._ordered(message, tries)]

    def _ordered(self, message: dict[str, Any], tries: int) -> QueueOutcome:
        booked = message.get("slotAt")
        if isinstance(booked, int | float) and booked - self._clock() > BUDGET_WAIT_SECONDS + 1:
            # Back early for a slot booked far ahead (a message hides an hour at the most): it
            # waits again without a claim or a try spent; the pair's row already names the slot.
            early = max(math.floor(booked - self._clock()) - 1, 0)
            return self._retry(message, message["attempt"], "budget", early, {"slotAt": booked})
        claim = self.storage.runstates.claim(
            self.name,
            message["scriptId"],
            message["deviceId"],
            message["version"],
            message.get("digest", ""),
            lease_seconds=self.settings.delivery_lease.total_seconds(),
            refresh_interval=self.settings.refresh_interval.total_seconds(),
            refresh_bar=self.budget.refresh_after,
            known=Row.from_snapshot(message["scriptId"], message["deviceId"], message.get("row")),
        )
        if claim.decision is Claim.BUSY:
            # Back when the other delivery's lease ends, not before.
            wait = claim.wait + random.uniform(0.1, 0.5)  # noqa: S311 - spread, not secrecy
            return self._retry(message, tries, "busy", wait)
        if claim.decision is not Claim.WRITE:
            return self._ignore(message, claim)
        if not isinstance(booked, int | float):
            booked = claim.slot_at
        refresh_tries = int(message.get("refreshTries") or 0)
        slot = self._take_budget(claim, booked, refresh_tries)
        if slot is not None:
            if slot.at is None and not claim.change and booked is None:
                return self._refresh_missed(message, tries, claim, slot, refresh_tries)
            self._finish(message, claim, "retried", slot.reason, slot_at=slot.at or 0.0)
            if slot.at is None:
                return self._retry(message, tries, slot.reason, slot.wait)
            # Visible a little before the slot (the queue counts whole seconds), so the message
            # sleeps the rest and writes on time: a write far past its slot could crowd a window.
            early = max(math.floor(slot.wait) - 1, 0)
            return self._retry(message, tries, slot.reason, early, {"slotAt": slot.at})
        item = Item(message, self.storage.load_state(message), claim.row)
        written = self.destination.write([item], self._pace)[0]
        return self._settle(message, tries, written, claim)

    def _unordered(self, first: dict[str, Any]) -> list[QueueOutcome]:
        """History rows: no claim; the backlog behind this message rides in the same call."""
        batch: list[tuple[dict[str, Any], Any]] = [(first, None)]
        outcomes = []
        if self.destination.batch > 1:
            queue = self.storage.queue(self.name)
            for received in queue.receive_messages(
                max_messages=min(self.destination.batch - 1, 31),
                visibility_timeout=_DRAIN_VISIBILITY,
            ):
                try:
                    batch.append((messages.parse(received.content, self.name), received))
                except messages.MalformedMessage:
                    raw = {"raw": received.content[:4096], "destination": self.name}
                    self.storage.enqueue(messages.poison(raw, "malformed_message"), poison=True)
                    queue.delete_message(received)
                    outcomes.append(QueueOutcome("poisoned", "malformed_message", raw))
                if len(batch) >= self.destination.batch:
                    break
        items = [Item(m, self.storage.load_state(m)) for m, _ in batch]
        results = self.destination.write(items, self._pace)
        for (message, received), written in zip(batch, results, strict=True):
            tries = message["attempt"] + (received.dequeue_count if received else 1)
            outcomes.append(self._settle(message, tries, written, None))
            if received is not None:
                self.storage.queue(self.name).delete_message(received)
        return outcomes

    def _refresh_missed(
        self, message: dict[str, Any], tries: int, claim: ClaimResult, slot: Slot, done: int
    ) -> QueueOutcome:
        """A refresh without free budget tries a little later, a few times, and then ends: the
        pair's next report is due again, older still, so nothing waits in the queue for long."""
        draw = random.random()  # noqa: S311 - spread, not secrecy
        again = refresh_retry(done, draw, claim.rank, self.budget.refresh_after)
        if again is None or slot.reason == "not_due":
            self._finish(message, claim, "ignored", "refresh_skipped")
            self.storage.forget_payload(message)
            return QueueOutcome("ignored", "refresh_skipped", message)
        self._finish(message, claim, "retried", "refresh")
        return self._retry(message, tries, "refresh", again, {"refreshTries": done + 1})

    def _take_budget(
        self, claim: ClaimResult, booked: float | None, refresh_tries: int
    ) -> Slot | None:
        """None once a write slot is ours (after a short sleep); else the wait and why.

        The slot booked for this message, or for an earlier version of its pair, is used when
        its time comes. Otherwise a change books the next slot even when it lies ahead, and
        comes back for it; a refresh takes budget only when it is free now and the pair is among
        the longest unwritten (the refresh age bar), so changes always go first.
        """
        if not self.destination.paced:
            return None
        if booked is not None:
            gate = self.budget.gate()
            if gate > 0:
                return Slot(None, gate, "throttled")
            early = booked - self._clock()
            if early > BUDGET_WAIT_SECONDS:
                return Slot(booked, early)
            if early >= -SLOT_LATENESS:
                return self.budget.sleep_until(booked)
            # Back too late: others have written since, so the stale slot is given up (unused,
            # it only leaves the budget under-spent) and a new one booked.
        bar = self.budget.refresh_after
        slot = self.budget.reserve(
            BUDGET_WAIT_SECONDS,
            book_ahead=books_ahead(claim.change),
            refresh_rank=None if claim.change else claim.rank,
            last_try=claim.change or refresh_retry(refresh_tries, 0.0, claim.rank, bar) is None,
        )
        if slot.at is not None and slot.wait <= BUDGET_WAIT_SECONDS:
            return self.budget.sleep_until(slot.at)
        return slot

    def _pace(self) -> bool:
        """A token-refresh retry is a write too: it takes a slot like any other."""
        if not self.destination.paced:
            return True
        return self.budget.acquire(BUDGET_WAIT_SECONDS).at is not None

    def _settle(
        self,
        message: dict[str, Any],
        tries: int,
        written: Written,
        claim: ClaimResult | None,
    ) -> QueueOutcome:
        """The one place an outcome is recorded: run-state row, payload, poison or retry."""
        result = written.result
        if result.outcome is Outcome.DELIVERED:
            self._finish(message, claim, "delivered", result.reason, written, delivered=True)
            self.storage.forget_payload(message)
            return QueueOutcome("delivered", result.reason, message, result)
        if result.outcome is Outcome.PERMANENT:
            self._finish(message, claim, "poisoned", result.reason, written)
            return self._poison(message, result.reason, result)
        delay = result.retry_after
        if result.status == 429 and self.destination.paced:
            # Graph keeps counting while a client is throttled: every instance waits it out.
            delay = self.budget.throttled(delay if delay is not None else _DEFAULT_THROTTLE)
        # After a timeout or a dropped connection the write may still land: keep the lease
        # until it runs out, so no other version of this pair is written in the meantime.
        keep = result.reason in ("timeout", "connection_error")
        self._finish(message, claim, "retried", result.reason, written, keep_lease=keep)
        # The back-off grows with failed writes only: waits for a lease or for budget are not
        # failures, and must not push a report's next try minutes away.
        failures = int(message.get("failures") or 0) + 1
        if delay is None:
            delay = backoff_delay(failures, 2, 300)
        extra = {"failures": failures}
        return self._retry(message, tries, result.reason, delay, extra, result=result)

    def _finish(
        self,
        message: dict[str, Any],
        claim: ClaimResult | None,
        outcome: str,
        reason: str,
        written: Written | None = None,
        *,
        delivered: bool = False,
        keep_lease: bool = False,
        slot_at: float = 0.0,
    ) -> None:
        if claim is None:
            return
        self.storage.runstates.finish(
            self.name,
            claim,
            message["version"],
            outcome=outcome,
            reason=reason,
            delivered=delivered,
            digest=message.get("digest"),
            detection_state=message.get("detectionState"),
            keep_lease=keep_lease,
            cache=written.cache if written else None,
            slot_at=slot_at,
        )

    def _ignore(self, message: dict[str, Any], claim: ClaimResult) -> QueueOutcome:
        self.storage.forget_payload(message)
        reason = {Claim.SUPERSEDED: "superseded", Claim.DELIVERED: "duplicate"}.get(
            claim.decision, "unchanged"
        )
        return QueueOutcome("ignored", reason, message)

    def _retry(
        self,
        message: dict[str, Any],
        tries: int,
        reason: str,
        delay: float,
        extra: dict[str, Any] | None = None,
        *,
        result: CallResult | None = None,
    ) -> QueueOutcome:
        """Send the report again after `delay`, unless its tries or its age are spent."""
        age = datetime.now(UTC) - messages.accepted_at(message)
        if tries >= self.settings.max_attempts or age > self.settings.max_age:
            if reason == "refresh":  # an old state again: the pair's next report refreshes it
                self.storage.forget_payload(message)
                return QueueOutcome("ignored", "refresh_skipped", message)
            return self._poison(message, "retries_exhausted", result, lastReason=reason)
        delay = min(max(delay, 0.0), MAX_RETRY_AFTER)
        # The carried row is stale once anything was written: the next claim reads its own.
        again = {k: v for k, v in message.items() if k not in ("slotAt", "row")}
        again |= {"attempt": tries, "lastReason": reason, **(extra or {})}
        self.storage.enqueue(again, delay)
        return QueueOutcome("retried", reason, again, result, delay)

    def _poison(
        self, message: dict[str, Any], reason: str, result: CallResult | None, **extra: Any
    ) -> QueueOutcome:
        error = result.error() if result is not None else None
        self.storage.enqueue(messages.poison(message, reason, error, **extra), poison=True)
        return QueueOutcome("poisoned", reason, message, result)

    # ---- sync mode ----------------------------------------------------------------------------

    def deliver_now(
        self, message: dict[str, Any], row: Row, owner: str, max_wait: float
    ) -> QueueOutcome:
        """Write one accepted report inline (sync mode), its pair's lease already taken.

        The same budget, gate, outcome classes and dead-lettering as the queue; transient
        failures retry while `max_wait` lasts, and then the caller gives the acceptance back.
        """
        claim = ClaimResult(Claim.WRITE, row, owner)
        started = self._clock()
        deadline = started + max_wait
        # Another try must end before the lease does, or it could land after a newer write.
        worst = self.settings.graph_connect_timeout + self.settings.graph_read_timeout
        lease_end = started + self.settings.delivery_lease.total_seconds()
        tries = 0
        while True:
            tries += 1
            slot = self.budget.acquire(max(deadline - self._clock(), 0.0))
            if slot.at is None:
                self._finish(message, claim, "retried", slot.reason)
                return QueueOutcome("retried", slot.reason, message, delay=slot.wait)
            item = Item(message, message["state"], row)
            written = self.destination.write([item], self._pace)[0]
            result = written.result
            if result.outcome is not Outcome.TRANSIENT:
                outcome = "delivered" if result.outcome is Outcome.DELIVERED else "poisoned"
                self._finish(
                    message,
                    claim,
                    outcome,
                    result.reason,
                    written,
                    delivered=outcome == "delivered",
                )
                if outcome == "poisoned":
                    self._poison(message, result.reason, result)
                return QueueOutcome(outcome, result.reason, message, result)
            delay = result.retry_after
            if result.status == 429:
                delay = self.budget.throttled(delay if delay is not None else _DEFAULT_THROTTLE)
            delay = delay if delay is not None else backoff_delay(tries, 0.5, 4)
            # Trying the same state again under our own lease is safe; giving up after a write
            # that may still land keeps the lease until it runs out.
            keep = result.reason in ("timeout", "connection_error")
            late = self._clock() + delay
            if tries >= self.settings.sync_attempts or late > deadline or late + worst >= lease_end:
                self._finish(message, claim, "retried", result.reason, written, keep_lease=keep)
                return QueueOutcome("retried", result.reason, message, result, delay)
            self._sleep(delay)


def emit_outcome(destination: str, outcome: QueueOutcome, dequeue_count: int | None) -> None:
    """One telemetry event per outcome, with the report id as the correlation id."""
    message, result = outcome.message, outcome.result
    attempt = message.get("attempt")
    if result is not None and outcome.outcome != "retried" and isinstance(attempt, int):
        attempt += 1  # the attempt that decided this outcome, 1-based as in sync mode
    emit(
        outcome.outcome,
        level=logging.INFO if outcome.outcome in ("delivered", "ignored") else logging.WARNING,
        destination=destination,
        reportId=message.get("reportId"),
        scriptId=message.get("scriptId"),
        deviceId=message.get("deviceId"),
        detectionState=message.get("detectionState"),
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
