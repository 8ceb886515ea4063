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
from datetime import timedelta  # noqa: E402
from typing import Any  # noqa: E402

from azure.core.credentials import AccessToken  # noqa: E402

from shared.delivery import deliver  # noqa: E402
from shared.graph import GraphClient  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _started


class StaticToken:
    """A credential that always returns the same bearer token (what the emulator accepts)."""

    def __init__(self, token: str) -> None:
        self._token = AccessToken(token, int(time.time()) + 3600)

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return self._token


class Body:
    """Quacks like shared.mapping.DeviceState for deliver(): it only asks for the PATCH body."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def patch_body(self) -> dict[str, Any]:
        return self.body


def main() -> int:
    config = json.loads(sys.stdin.read())
    script, devices, body = config["script"], config["devices"], config["body"]
    built = time.perf_counter()
    graph = GraphClient(config["graph_url"], config["scope"], StaticToken(config["token"]))
    build_seconds = time.perf_counter() - built
    template = "{scriptId}:{deviceId}"
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
            outcome = deliver(
                graph,
                script_id=script,
                device_id=device,
                state=Body(body),  # type: ignore[arg-type]
                template=template,
                attempts=config["attempts"],
                max_wait=timedelta(seconds=config["max_wait"]),
            )
            result = outcome.result
            attempts_total += outcome.attempts
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
