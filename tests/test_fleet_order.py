"""Which write goes next when the budget cannot keep up: a pair holds one place in the budget's
queue, the longest-unwritten pairs are refreshed first, and a claim reads no row it was handed.

The pure rules are checked as functions; the rest drives `shared.delivery.Delivery` and
`shared.pacing.SharedBudget` against Azurite and the Graph emulator.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Any

import pytest

from shared.pacing import BUDGET_PARTITION, SharedBudget
from shared.policy import (
    MAX_REFRESH_AFTER,
    REFRESH_RETRY_MIN,
    REFRESH_RETRY_WINDOW,
    REFRESH_SPREAD,
    REFRESH_STEP,
    REFRESH_TRIES,
    REFRESH_TRIES_MORE,
    SLOT_LATENESS,
    Claim,
    PairState,
    decide_claim,
    refresh_after,
    refresh_rank,
    refresh_retry,
)
from tests.delivering import make_delivery, queued
from tests.stack import SCRIPT, Emulator, StorageView, report_body


def run(device: str, stdout: str, second: int) -> dict[str, Any]:
    execution = {**report_body()["execution"], "stdout": stdout}
    execution["finishedAt"] = f"2026-11-28T10:{second // 60:02d}:{second % 60:02d}Z"
    return {"deviceId": device, "execution": execution}


def patches(graph: Emulator) -> list[dict[str, Any]]:
    return [r for r in graph.requests() if r["method"] == "PATCH"]


# ---- the pure rules --------------------------------------------------------------------------


def test_the_refresh_age_bar_rises_a_step_per_miss_and_falls_a_step_per_unused_slot() -> None:
    floor = 8 * 3600.0
    assert refresh_after(0.0, floor) == floor  # no bar yet: the setting
    raised = refresh_after(floor, floor, missed=1)
    assert raised == pytest.approx(floor * (1 + REFRESH_STEP))
    assert refresh_after(raised, floor, idle_slots=1) == pytest.approx(floor)
    twice = refresh_after(raised, floor, missed=1)
    assert refresh_after(twice, floor, idle_slots=1) == pytest.approx(raised)
    # Never under the setting, never past a year, and no bar at all when every report is written.
    assert refresh_after(raised, floor, idle_slots=10**9) == floor
    assert refresh_after(MAX_REFRESH_AFTER, floor, missed=1) == MAX_REFRESH_AFTER
    assert refresh_after(5000.0, 0.0, missed=1) == 0.0


def test_a_writing_version_inherits_the_slot_its_pair_booked_while_that_slot_is_usable() -> None:
    pair = PairState(accepted="2", delivered="1", digest="d", written_at=0.0, slot_at=500.0)
    ahead = decide_claim(pair, "2", "e", 100.0, 3600)
    assert (ahead.claim, ahead.slot_at) == (Claim.WRITE, 500.0)
    just_late = decide_claim(pair, "2", "e", 500.0 + SLOT_LATENESS, 3600)
    assert just_late.slot_at == 500.0
    too_late = decide_claim(pair, "2", "e", 500.0 + SLOT_LATENESS + 0.1, 3600)
    assert (too_late.claim, too_late.slot_at) == (Claim.WRITE, None)
    # A version that does not write takes nothing over.
    assert decide_claim(pair, "1", "e", 100.0, 3600).slot_at is None


def test_a_refresh_is_ranked_by_its_age_stretched_by_a_share_its_report_fixes() -> None:
    pair = PairState(accepted="2", delivered="1", digest="d", written_at=1000.0)
    refresh = decide_claim(pair, "2", "d", 1000.0 + 7200, 3600, key="s/d1")
    assert (refresh.claim, refresh.change) == (Claim.WRITE, False)
    assert refresh.rank == refresh_rank(7200.0, "s/d1/2")  # its age, 7200 s, spread
    ranks = [refresh_rank(3600.0, f"pair-{n}") for n in range(2000)]
    assert all(3600 <= r < 3600 * (1 + REFRESH_SPREAD) for r in ranks)
    # Spread over the whole share, so a bar between two whole intervals lets part of one through.
    assert min(ranks) < 3600 * (1 + REFRESH_SPREAD / 10) and max(ranks) > 3600 * 1.9**0.2
    # Below the fleet's bar an unchanged state is not due, whatever the interval says.
    rank = refresh.rank
    assert decide_claim(pair, "2", "d", 8200.0, 3600, refresh_bar=rank + 1, key="s/d1").claim is (
        Claim.UNCHANGED
    )


def test_a_missed_refresh_tries_again_within_minutes_and_more_often_the_older_it_is() -> None:
    delays = [refresh_retry(0, draw / 10) for draw in range(10)]
    assert all(REFRESH_RETRY_MIN <= d < REFRESH_RETRY_WINDOW for d in delays if d is not None)
    assert refresh_retry(REFRESH_TRIES, 0.5, rank=100.0, bar=100.0) is None
    assert refresh_retry(REFRESH_TRIES, 0.5, rank=130.0, bar=100.0) is not None
    most = REFRESH_TRIES + REFRESH_TRIES_MORE
    assert refresh_retry(most - 1, 0.5, rank=10**6, bar=100.0) is not None
    assert refresh_retry(most, 0.5, rank=10**6, bar=100.0) is None
    assert refresh_retry(most, 0.5, rank=float("inf"), bar=100.0) is None  # never written


# ---- the shared refresh age bar --------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_refreshes_below_the_shared_bar_take_no_budget_and_a_miss_raises_it_for_every_instance(
    storage: StorageView,
) -> None:
    clock = Clock()
    table = storage.storage.table

    def instance() -> SharedBudget:
        return SharedBudget(table, 1, clock=clock, sleep=lambda _: None, refresh_interval=100)

    one, other = instance(), instance()
    assert one.reserve(3, refresh_rank=99).reason == "not_due"
    assert one.reserve(3, refresh_rank=150).at is not None  # free budget, old enough
    for _ in range(5):  # changes book the next seconds
        one.reserve(3, book_ahead=True)
    missed = one.reserve(3, refresh_rank=150)
    assert (missed.at, missed.reason) == (None, "budget")
    bar = 100 * (1 + REFRESH_STEP)
    stored = table.get_entity(BUDGET_PARTITION, "pace")["RefreshAfter"]
    assert stored == pytest.approx(bar)
    # Another instance reads the raised bar with its next reservation.
    assert other.reserve(3, refresh_rank=100.5).reason == "not_due"
    assert other.refresh_after == pytest.approx(bar)
    # Budget left unused lowers it again: 60 idle seconds are 57 unused slots at 0.95/s.
    clock.now += 120
    assert other.reserve(3, book_ahead=True).at is not None
    assert table.get_entity(BUDGET_PARTITION, "pace")["RefreshAfter"] == pytest.approx(100)
    assert other.reserve(3, refresh_rank=100.5).at is not None


def test_a_young_refresh_that_finds_the_budget_free_is_left_for_later_below_the_bar(
    storage: StorageView,
    emulators: tuple[Emulator, Emulator],
    identity_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fleet's misses have raised the bar to 2 h: of ten pairs due by the 1 h interval,
    those whose rank cannot reach it take no budget, though they come first and it is free.
    (Over a fleet this keeps the oldest age near its limit: bench.fleet.)"""
    graph, _ = emulators
    delivery, config = make_delivery(
        storage, graph.url, BRIDGE_REFRESH_INTERVAL="1h", BRIDGE_GRAPH_WRITES_PER_SECOND="1"
    )
    clock = Clock()
    monkeypatch.setattr(storage.storage.runstates, "_clock", clock)
    devices = [str(uuid.uuid4()) for _ in range(10)]
    for n, device in enumerate(devices):
        clock.now += 1800  # device n's last write: 3600 + 1800 x (9 - n) s before the reports
        [done] = delivery.process(json.dumps(queued(config, **run(device, '{"a":1}', n))))
        assert done.outcome == "delivered"
    clock.now += 3600
    age = {d: 3600 + 1800 * (9 - n) for n, d in enumerate(devices)}
    table = storage.storage.table
    table.upsert_entity(
        {"PartitionKey": BUDGET_PARTITION, "RowKey": "pace", "RefreshAfter": 7200.0}
    )
    outcomes = {
        d: o
        for n, d in reversed(list(enumerate(devices)))  # youngest first
        for o in delivery.process(json.dumps(queued(config, **run(d, '{"a":1}', 100 + n))))
    }
    young = [d for d in devices if age[d] * (1 + REFRESH_SPREAD) < 7200]
    old = [d for d in devices if age[d] >= 7200]
    assert young and old
    assert all(outcomes[d].outcome == "ignored" for d in young)
    written = [d for d, o in outcomes.items() if o.outcome == "delivered"]
    assert written and set(written) <= set(old)
    # The rest of the old ones try again in a few minutes; none of them waits an interval.
    assert all(outcomes[d].reason in ("delivered", "refresh") for d in old)
    assert len(patches(graph)) == 10 + len(written)


# ---- one place per pair in the budget's queue --------------------------------------------------


def test_a_newer_report_takes_over_the_slot_its_pair_booked_and_only_it_is_written(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None
) -> None:
    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url, BRIDGE_GRAPH_WRITES_PER_SECOND="1")
    device = str(uuid.uuid4())
    for _ in range(4):  # other instances booked the next 4 s
        delivery.budget.reserve(60, book_ahead=True)
    [older] = delivery.process(json.dumps(queued(config, **run(device, '{"v":1}', 10))))
    assert (older.outcome, older.reason) == ("retried", "budget")
    slot = older.message["slotAt"]
    assert slot - time.time() > 3
    next_free = storage.storage.table.get_entity(BUDGET_PARTITION, "pace")["Next"]
    [newer] = delivery.process(json.dumps(queued(config, **run(device, '{"v":2}', 20))))
    assert (newer.outcome, newer.message["slotAt"]) == ("retried", slot)
    # No second booking: the budget's next free time did not move.
    assert storage.storage.table.get_entity(BUDGET_PARTITION, "pace")["Next"] == next_free
    time.sleep(max(slot - time.time() - 2, 0))
    outcomes = [o for m in (older.message, newer.message) for o in delivery.process(json.dumps(m))]
    assert [(o.outcome, o.reason) for o in outcomes] == [
        ("ignored", "superseded"),
        ("delivered", "delivered"),
    ]
    [written] = patches(graph)
    assert written["body"]["scriptOutput"] == '{"v":2}'
    assert datetime.fromisoformat(written["time"]).timestamp() >= slot - SLOT_LATENESS


def test_a_message_back_early_for_a_far_slot_waits_again_without_a_claim_or_a_try(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None
) -> None:
    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url, BRIDGE_MAX_ATTEMPTS="2")
    message = {**queued(config), "slotAt": time.time() + 7200, "attempt": 1}
    reads = []
    table = storage.storage.table
    real = table.get_entity
    table.get_entity = lambda *a, **k: reads.append(a) or real(*a, **k)  # type: ignore[method-assign]
    try:
        [outcome] = delivery.process(json.dumps(message))
    finally:
        table.get_entity = real  # type: ignore[method-assign]
    assert (outcome.outcome, outcome.reason) == ("retried", "budget")
    assert outcome.message["attempt"] == 1 and outcome.message["slotAt"] == message["slotAt"]
    assert 3500 <= outcome.delay <= 3600  # the queue hides it an hour at the most
    assert reads == [] and graph.requests() == []


# ---- the row ingest left ---------------------------------------------------------------------


def carried(storage: StorageView, config: Any, **overrides: Any) -> dict[str, Any]:
    """A message as ingest builds it: accepted first, the row it left carried along."""
    message = queued(config, **overrides)
    accepted = storage.storage.runstates.accept(
        message["scriptId"],
        message["deviceId"],
        message["version"],
        message["reportId"],
        message["detectionState"],
    )
    return {**message, "row": accepted.row.snapshot()}


@pytest.fixture
def row_reads(storage: StorageView) -> Any:
    reads: list[tuple[str, str]] = []
    table = storage.storage.table
    real = table.get_entity

    def counted(partition_key: str, row_key: str, **kwargs: Any) -> Any:
        if partition_key != BUDGET_PARTITION:
            reads.append((partition_key, row_key))
        return real(partition_key=partition_key, row_key=row_key, **kwargs)

    table.get_entity = counted  # type: ignore[method-assign]
    yield reads
    table.get_entity = real  # type: ignore[method-assign]


def test_a_claim_on_the_row_ingest_left_reads_nothing_while_nobody_wrote_since(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None, row_reads: Any
) -> None:
    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url)
    device = str(uuid.uuid4())
    message = carried(storage, config, **run(device, '{"a":1}', 10))
    row_reads.clear()
    [outcome] = delivery.process(json.dumps(message))
    assert outcome.outcome == "delivered"
    assert row_reads == []
    assert len(patches(graph)) == 1


def test_a_row_written_since_ingest_is_read_again_and_decides(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None, row_reads: Any
) -> None:
    """Carried: Graph has A, and B's delivery holds the lease. Since then B was delivered, so
    the report back at A is a change again and is written (on a row read afresh)."""
    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url, BRIDGE_REFRESH_INTERVAL="8h")
    device = str(uuid.uuid4())
    [first] = delivery.process(json.dumps(carried(storage, config, **run(device, "{}", 10))))
    assert first.outcome == "delivered"
    b = carried(storage, config, **run(device, '{"b":1}', 20))
    runstates = storage.storage.runstates
    held = runstates.claim(
        "graph", SCRIPT, device, b["version"], b["digest"], lease_seconds=30, refresh_interval=0
    )
    back_to_a = carried(storage, config, **run(device, "{}", 30))
    runstates.finish(
        "graph", held, b["version"], outcome="delivered", reason="delivered", delivered=True,
        digest=b["digest"],
    )  # fmt: skip
    row_reads.clear()
    [a_done] = delivery.process(json.dumps(back_to_a))
    assert a_done.outcome == "delivered"
    assert row_reads == [(SCRIPT, device)]
    assert [p["body"]["scriptOutput"] for p in patches(graph)] == ["{}", "{}"]
