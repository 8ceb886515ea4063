"""Change-only writes: an unchanged state waits for the refresh interval; changes go first.

Delivery against Azurite and the Graph emulator, with the run-state clock moved by the test so
"older than the interval" needs no waiting.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from shared.policy import Claim, PairState, decide_claim
from tests.delivering import Recorder, make_delivery, queued
from tests.stack import Emulator, StorageView, report_body


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def run(device: str, stdout: str, second: int) -> dict[str, Any]:
    execution = {
        **report_body()["execution"],
        "stdout": stdout,
        "finishedAt": f"2026-11-28T10:{second // 60:02d}:{second % 60:02d}Z",
    }
    return {"deviceId": device, "execution": execution}


@pytest.fixture
def clock(storage: StorageView, monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(storage.storage.runstates, "_clock", clock)
    return clock


def patches(graph: Emulator) -> list[dict[str, Any]]:
    return [r for r in graph.requests() if r["method"] == "PATCH"]


@pytest.mark.parametrize(
    ("interval", "moved", "written"),
    [
        pytest.param("1h", 60, False, id="equal-state-within-the-interval-is-not-written"),
        pytest.param("1h", 3601, True, id="equal-state-after-the-interval-is-written"),
        pytest.param("0", 1, True, id="zero-writes-every-report"),
    ],
)
def test_an_unchanged_state_is_written_again_only_after_the_refresh_interval(
    storage: StorageView,
    emulators: tuple[Emulator, Emulator],
    identity_env: None,
    clock: Clock,
    interval: str,
    moved: int,
    written: bool,
) -> None:
    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url, BRIDGE_REFRESH_INTERVAL=interval)
    device = str(uuid.uuid4())
    [first] = delivery.process(json.dumps(queued(config, **run(device, '{"a":1}', 10))))
    assert first.outcome == "delivered"
    clock.now += moved
    [again] = delivery.process(json.dumps(queued(config, **run(device, '{"a":1}', 20))))
    assert len(patches(graph)) == (2 if written else 1)
    if written:
        assert again.outcome == "delivered"
    else:
        assert (again.outcome, again.reason) == ("ignored", "unchanged")
        # It counts as delivered: an older report arriving later is a duplicate, not a write.
        [late] = delivery.process(json.dumps(queued(config, **run(device, '{"a":1}', 15))))
        assert (late.outcome, late.reason) == ("ignored", "duplicate")


def test_a_changed_state_is_written_at_once_whatever_the_interval(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None, clock: Clock
) -> None:
    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url, BRIDGE_REFRESH_INTERVAL="8h")
    device = str(uuid.uuid4())
    delivery.process(json.dumps(queued(config, **run(device, '{"a":1}', 10))))
    clock.now += 1
    [changed] = delivery.process(json.dumps(queued(config, **run(device, '{"a":2}', 20))))
    assert changed.outcome == "delivered"
    assert [p["body"]["scriptOutput"] for p in patches(graph)] == [
        '{"a":1}',
        '{"a":2}',
    ]


def test_a_backlog_of_refreshes_takes_no_budget_a_change_needs(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None, clock: Clock
) -> None:
    graph, _ = emulators
    delivery, config = make_delivery(
        storage, graph.url, BRIDGE_REFRESH_INTERVAL="1h", BRIDGE_GRAPH_WRITES_PER_SECOND="1"
    )
    devices = [str(uuid.uuid4()) for _ in range(6)]
    for n, device in enumerate(devices):
        [done] = delivery.process(json.dumps(queued(config, **run(device, '{"a":1}', n))))
        assert done.outcome == "delivered"
    clock.now += 3601  # every pair's last write is now older than the interval
    # Other instances have booked the budget's next seconds for changes of their own.
    booked = [delivery.budget.reserve(60, book_ahead=True).at for _ in range(5)]
    recorder = Recorder(storage)
    refreshes = [queued(config, **run(d, '{"a":1}', 100 + n)) for n, d in enumerate(devices[:5])]
    change = queued(config, **run(devices[5], '{"a":2}', 200))
    outcomes = [o for m in [*refreshes, change] for o in delivery.process(json.dumps(m))]
    # A refresh books nothing ahead: it tries again a little later (at random, a few times).
    assert [(o.outcome, o.reason) for o in outcomes] == [("retried", "refresh")] * 5 + [
        ("retried", "budget")
    ]
    assert all(o.delay >= 5 and "slotAt" not in o.message for o in outcomes[:5])
    # The refreshes reserved nothing: the change's slot is the very next one after the booked.
    slot = outcomes[-1].message["slotAt"]
    assert abs(slot - (booked[-1] + delivery.budget.interval)) < 1e-6
    assert [m.get("slotAt") for m, _, _ in recorder.sent[:5]] == [None] * 5


def test_the_decision_is_pure_and_reads_only_the_pair_state() -> None:
    state = PairState(accepted="2", delivered="1", digest="d", written_at=1000.0)
    assert decide_claim(state, "2", "d", 1000.0 + 59, 60).claim is Claim.UNCHANGED
    refresh = decide_claim(state, "2", "d", 1000.0 + 61, 60)
    assert (refresh.claim, refresh.change) == (Claim.WRITE, False)
    change = decide_claim(state, "2", "e", 1000.0 + 1, 60)
    assert (change.claim, change.change) == (Claim.WRITE, True)
    assert decide_claim(state, "1", "e", 0, 60).claim is Claim.SUPERSEDED
    leased = PairState(accepted="2", lease_until=10.0)
    busy = decide_claim(leased, "2", "e", 4.0, 60)
    assert (busy.claim, busy.wait) == (Claim.BUSY, 6.0)
