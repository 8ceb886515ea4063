"""Per-device rate limit: a chatty or hostile agent is slowed down with 429 + Retry-After before
it can spend the tenant's Graph write budget; other devices are unaffected.
"""

from __future__ import annotations

import json
import uuid

from shared.api import PROBLEM_JSON, ApiResponse, ingest
from shared.ratelimit import DeviceRateLimiter
from shared.runtime import Bridge
from shared.settings import Settings
from tests.stack import StorageView, report_body


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_device_gets_its_limit_per_minute_then_a_whole_number_of_seconds_to_wait() -> None:
    clock = FakeClock()
    limiter = DeviceRateLimiter(3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [None, None, None]
    assert limiter.acquire("a") == 20  # one report per 20 s refills at 3 per minute
    clock.now += 19.5
    assert limiter.acquire("a") == 1  # never 0: "retry after 0 s" would invite a busy loop
    clock.now += 0.5
    assert limiter.acquire("a") is None


def test_devices_are_limited_independently() -> None:
    limiter = DeviceRateLimiter(1, clock=FakeClock())
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") is not None
    assert limiter.acquire("b") is None


def test_zero_turns_the_limit_off() -> None:
    limiter = DeviceRateLimiter(0, clock=FakeClock())
    assert all(limiter.acquire("a") is None for _ in range(1000))


def test_memory_is_bounded_by_forgetting_the_longest_idle_device() -> None:
    clock = FakeClock()
    limiter = DeviceRateLimiter(1, clock=clock, max_devices=2)
    for device in ("a", "b", "c"):
        assert limiter.acquire(device) is None
        clock.now += 1
    assert limiter.acquire("c") is not None  # still remembered
    assert limiter.acquire("a") is None  # forgotten: it starts with a full bucket again


def post(bridge: Bridge, device: str, finished: str = "2026-11-28T10:00:02Z") -> ApiResponse:
    execution = {**report_body()["execution"], "finishedAt": finished}
    body = json.dumps(report_body(deviceId=device, execution=execution)).encode()
    return ingest("POST", {"Content-Type": "application/json"}, body, bridge=bridge)


def limited_bridge(limit: int, storage: StorageView) -> Bridge:
    settings = Settings.model_validate(
        {
            "BRIDGE_DEVICE_RATE_LIMIT": str(limit),
            "AzureWebJobsStorage": storage.connection_string,
        }
    )
    return Bridge(settings=settings, graph=None)  # type: ignore[arg-type]  # queue mode: no write


def test_a_device_over_its_limit_gets_429_problem_with_retry_after_and_nothing_is_queued(
    storage: StorageView,
) -> None:
    bridge = limited_bridge(2, storage)
    device = str(uuid.uuid4())
    sent = [post(bridge, device, f"2026-11-28T10:00:0{n}Z").status for n in range(2)]
    assert sent == [202, 202]
    refused = post(bridge, device, "2026-11-28T10:00:05Z")
    assert refused.status == 429
    assert refused.content_type == PROBLEM_JSON
    assert refused.body["type"].endswith(":rate-limited")
    assert refused.headers["Retry-After"].isdigit()
    assert 1 <= int(refused.headers["Retry-After"]) <= 30
    assert storage.queued() == 2
    assert post(bridge, str(uuid.uuid4())).status == 202  # another device is not affected


def test_the_default_is_sixty_reports_per_minute() -> None:
    settings = Settings.model_validate({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert settings.device_rate_limit == 60
