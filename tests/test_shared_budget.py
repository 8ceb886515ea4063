"""The write budget holds across instances: hosts share it, and one 429 pauses them all."""

from __future__ import annotations

import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from shared.pacing import SharedBudget
from tests.stack import (
    INGEST,
    SCRIPT,
    Emulator,
    HostFactory,
    StorageView,
    busiest_window,
    wait_for,
)

BUDGET = 9.5  # per_slot = 9 writes in each one-second slot


class FrozenClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def reports(count: int) -> list[dict[str, Any]]:
    finished = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [
        {
            "deviceId": str(uuid.uuid4()),
            "scriptId": SCRIPT,
            "execution": {"exitCode": 0, "stdout": f'{{"n":{n}}}', "finishedAt": finished},
        }
        for n in range(count)
    ]


def send_all(url: str, bodies: list[dict[str, Any]]) -> None:
    session = requests.Session()

    def send(body: dict[str, Any]) -> int:
        return session.post(url + INGEST, json=body, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(send, bodies)) == {202}


def test_instances_sharing_the_table_space_their_writes_by_the_budget(
    storage: StorageView,
) -> None:
    table = storage.storage.table
    start = time.time()
    clocks = [FrozenClock(start) for _ in range(3)]
    budgets = [SharedBudget(table, 8, clock=c, sleep=c.sleep) for c in clocks]
    granted = []
    for _ in range(4):
        for clock, budget in zip(clocks, budgets, strict=True):
            if budget.acquire(max_wait=1.0).at is not None:
                granted.append(clock.now)
            clock.now = start  # every instance asks "now": only the budget spaces them
    gaps = [b - a for a, b in zip(sorted(granted), sorted(granted)[1:], strict=False)]
    # 8 per second less 5% headroom: one write every 1/7.6 s, whichever instance asks.
    assert len(granted) == 8  # the reservations that fit in the one second each may wait
    assert min(gaps) >= 1 / 7.6 - 1e-6


def test_a_429_closes_the_gate_for_every_instance(storage: StorageView) -> None:
    table = storage.storage.table
    now = time.time()
    first, second = FrozenClock(now), FrozenClock(now)
    SharedBudget(table, 8, clock=first, sleep=first.sleep).throttled(5)
    other = SharedBudget(table, 8, clock=second, sleep=second.sleep)
    closed = other.acquire(max_wait=2)
    assert (closed.at, closed.reason) == (None, "throttled")
    assert 4.9 <= closed.wait <= 5
    second.now += closed.wait
    assert other.acquire(max_wait=2).at is not None


def test_three_hosts_share_the_budget_and_lose_nothing_when_one_is_killed(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, _ = emulators
    graph.post("config", {"writeLimit": "200/20"})
    settings = {
        "BRIDGE_GRAPH_WRITES_PER_SECOND": str(BUDGET),
        "BRIDGE_DEVICE_RATE_LIMIT": "0",
        "DEVSTACK_QUEUE_LEASE": "10",
    }
    hosts = [start_queue_host(**settings) for _ in range(3)]
    bodies = reports(600)
    send_all(hosts[0].url, bodies)
    wait_for(lambda: len(graph.states()) >= 200, timeout=60, interval=0.5)
    os.kill(hosts[1].popen.pid, signal.SIGKILL)
    wait_for(lambda: len(graph.states()) == len(bodies), timeout=120, interval=1)

    writes = [r for r in graph.requests() if r["method"] == "PATCH"]
    assert [r for r in writes if r["status"] == 429] == []
    times = [stamp(r["time"]) for r in writes]
    assert busiest_window(times, 20) <= BUDGET * 20
    states = {s["runStateId"].split(":")[1]: s for s in graph.states()}
    for body in bodies:
        assert states[body["deviceId"]]["scriptOutput"] == body["execution"]["stdout"]
    assert storage.poison() == []


def test_one_instances_429_pauses_every_instance_until_retry_after(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, _ = emulators
    hosts = [
        start_queue_host(BRIDGE_GRAPH_WRITES_PER_SECOND=str(BUDGET), BRIDGE_DEVICE_RATE_LIMIT="0")
        for _ in range(3)
    ]
    bodies = reports(90)
    graph.post("faults", [{"status": 429, "retryAfter": "5", "count": 1}])
    send_all(hosts[0].url, bodies)
    wait_for(lambda: len(graph.states()) == len(bodies), timeout=90, interval=0.5)

    writes = [r for r in graph.requests() if r["method"] == "PATCH"]
    [throttled] = [r for r in writes if r["status"] == 429]
    gate_closed = stamp(throttled["time"])
    # Writes already past the gate may still arrive; after that, nobody writes until it opens.
    during = [r for r in writes if gate_closed + 1.0 < stamp(r["time"]) < gate_closed + 4.9]
    assert during == []
    assert any(stamp(r["time"]) >= gate_closed + 5 for r in writes)
