"""Graph writes are paced: no window ever sees more writes than the configured rate allows."""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import requests

from shared.graph import parse_retry_after
from shared.pacing import MAX_RETRY_AFTER, SharedBudget
from tests.stack import (
    INGEST,
    SCRIPT,
    Emulator,
    HostFactory,
    StorageView,
    busiest_window,
    wait_for,
)


class FrozenClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def budget(storage: StorageView, clock: FrozenClock, rate: float = 8) -> SharedBudget:
    return SharedBudget(storage.storage.table, rate, clock=clock, sleep=clock.sleep)


def test_reservations_are_spaced_by_the_budget_less_headroom(storage: StorageView) -> None:
    clock = FrozenClock(time.time())
    pace = budget(storage, clock)
    slots = [pace.reserve(60).at for _ in range(20)]
    assert all(at is not None for at in slots)
    gaps = [b - a for a, b in itertools.pairwise(slots)]  # type: ignore[operator]
    assert min(gaps) >= 1 / 7.6 - 1e-6  # 8 per second less 5% headroom
    assert busiest_window(slots, 1) <= 8  # type: ignore[arg-type]


def test_a_refresh_reserves_nothing_when_the_budget_is_taken_ahead(storage: StorageView) -> None:
    clock = FrozenClock(time.time())
    pace = budget(storage, clock)
    booked = [pace.reserve(3, book_ahead=True) for _ in range(40)]
    assert booked[-1].at is not None and booked[-1].wait > 3  # a change books the far slot
    refresh = pace.reserve(3)
    assert refresh.at is None and refresh.wait > 3
    after = pace.reserve(3, book_ahead=True)
    assert after.at == booked[-1].at + pace.interval  # the refresh took no slot


def test_a_huge_retry_after_closes_the_gate_for_an_hour_at_most(storage: StorageView) -> None:
    clock = FrozenClock(time.time())
    pace = budget(storage, clock)
    for seconds in (86_400.0, 1e308):
        assert pace.throttled(seconds) == MAX_RETRY_AFTER
    slot = pace.reserve(3)
    assert (slot.at, slot.reason) == (None, "throttled")
    assert slot.wait <= 3600
    clock.now += 3600
    assert pace.reserve(3).at is not None


def test_retry_after_from_graph_is_capped_at_an_hour() -> None:
    assert parse_retry_after("86400") == 3600
    assert parse_retry_after("1e308") == 3600
    far = format_datetime(datetime.now(UTC) + timedelta(days=400), usegmt=True)
    assert parse_retry_after(far) == 3600


def test_queue_delivery_stays_within_the_configured_rate(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, _ = emulators
    rate, reports = 4.0, 100
    host = start_queue_host(BRIDGE_GRAPH_WRITES_PER_SECOND=str(rate), BRIDGE_DEVICE_RATE_LIMIT="0")
    finished = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    session = requests.Session()
    for _ in range(reports):
        body = {
            "deviceId": str(uuid.uuid4()),
            "scriptId": SCRIPT,
            "execution": {"exitCode": 0, "stdout": "{}", "finishedAt": finished},
        }
        assert session.post(host.url + INGEST, json=body, timeout=30).status_code == 202
    wait_for(lambda: len(graph.states()) == reports, timeout=90, interval=0.5)
    times = [
        datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()
        for r in graph.requests()
        if r["method"] == "PATCH"
    ]
    assert len(times) == reports
    assert busiest_window(times, 20) <= rate * 20 + 1
    assert busiest_window(times, 5) <= rate * 5 + 1
