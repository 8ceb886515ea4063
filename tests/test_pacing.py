"""Graph writes are paced: no window ever sees more writes than the configured rate allows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import requests

from shared.pacing import TokenBucket
from tests.stack import INGEST, SCRIPT, Emulator, HostFactory, StorageView, wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def busiest_window(times: list[float], width: float) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + width) for i, start in enumerate(times))


def test_token_bucket_never_exceeds_rate_times_window_plus_one() -> None:
    clock = FakeClock()
    bucket = TokenBucket(8, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(500):
        bucket.acquire()
        times.append(clock.now)
    assert busiest_window(times, 20) <= 8 * 20 + 1
    # And it uses the budget: 500 writes take the time the rate says, not longer.
    assert 499 / 8 <= clock.now <= 499 / 8 + 0.01


def test_token_bucket_saves_no_burst_while_idle() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, clock=clock, sleep=clock.sleep)
    clock.now = 3600.0
    assert bucket.acquire()
    assert clock.now == 3600.0
    assert bucket.acquire()
    assert clock.now >= 3600.1 - 1e-9


def test_token_bucket_gives_up_instead_of_waiting_past_max_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, clock=clock, sleep=clock.sleep)
    assert bucket.acquire(max_wait=0)
    assert not bucket.acquire(max_wait=0.5)
    assert clock.now == 0


def test_a_throttle_pauses_the_bucket_for_the_retry_after() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock, sleep=clock.sleep)
    bucket.throttled(5)
    assert bucket.acquire()
    assert clock.now >= 5


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
