"""Worker: N PATCHes through the bridge's own GraphClient, in a fresh process of the project venv.

Reads its config as JSON on stdin, prints one JSON line of figures. CPU is this process's own
(time.process_time): the Graph emulator runs in another process and is not counted.
"""

from __future__ import annotations

import json
import sys
import time

_started = time.perf_counter()
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

from azure.core.credentials import AccessToken  # noqa: E402

from shared.delivery import backoff_delay  # noqa: E402
from shared.graph import GraphClient  # noqa: E402
from shared.outcomes import CallResult, Outcome  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _started


class StaticToken:
    """A credential that always returns the same bearer token (what the emulator accepts)."""

    def __init__(self, token: str) -> None:
        self._token = AccessToken(token, int(time.time()) + 3600)

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return self._token


def with_retries(
    graph: GraphClient,
    script: str,
    device: str,
    body: dict[str, Any],
    *,
    attempts: int,
    max_wait: float,
) -> tuple[CallResult, int]:
    """Sync mode's retry rule (shared.delivery.Delivery.deliver_now) without its storage: retry a
    transient answer after Retry-After or jittered backoff while attempts and the wait last."""
    tried = 0
    while True:
        tried += 1
        result = graph.patch_run_state(script, f"{script}:{device}", body)
        if result.outcome is not Outcome.TRANSIENT or tried >= attempts:
            return result, tried
        delay = (
            result.retry_after if result.retry_after is not None else backoff_delay(tried, 0.5, 4)
        )
        if delay > max_wait:
            return result, tried
        max_wait -= delay
        time.sleep(delay)


def main() -> int:
    config = json.loads(sys.stdin.read())
    script, devices, body = config["script"], config["devices"], config["body"]
    built = time.perf_counter()
    graph = GraphClient(config["graph_url"], config["scope"], StaticToken(config["token"]))
    build_seconds = time.perf_counter() - built
    statuses: Counter[str] = Counter()
    attempts_total = 0
    delivered = 0
    errors: Counter[str] = Counter()

    def one(device: str) -> None:
        nonlocal attempts_total, delivered
        if config["mode"] == "cost":
            result = graph.patch_run_state(script, f"{script}:{device}", body)
            attempts_total += 1
        else:
            result, tried = with_retries(
                graph,
                script,
                device,
                body,
                attempts=config["attempts"],
                max_wait=config["max_wait"],
            )
            attempts_total += tried
        statuses[str(result.status)] += 1
        if result.outcome.value == "delivered":
            delivered += 1
        else:
            errors[result.reason] += 1

    first, first_call_seconds = time.perf_counter(), 0.0
    for index, device in enumerate(devices[: config["warmup"]]):
        one(device)
        if index == 0:
            first_call_seconds = time.perf_counter() - first
    statuses.clear()
    errors.clear()
    attempts_total = delivered = 0
    timed = devices[config["warmup"] :]
    wall, cpu = time.perf_counter(), time.process_time()
    for device in timed:
        one(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        json.dumps(
            {
                "client": "bridge",
                "n": len(timed),
                "wall": wall,
                "cpu": cpu,
                "delivered": delivered,
                "attempts": attempts_total,
                "statuses": dict(statuses),
                "errors": dict(errors),
                "import_seconds": IMPORT_SECONDS,
                "build_seconds": build_seconds,
                "first_call_seconds": first_call_seconds,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
