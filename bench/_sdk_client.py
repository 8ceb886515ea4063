"""Worker: N PATCHes through the official msgraph-beta-sdk, run with bench/.venv-sdk's Python.

What a user would write themselves: a GraphServiceClient with its default middleware (retry
handler included), one typed DeviceComplianceScriptDeviceState per write, awaited one after the
other. The credential returns a static bearer token issued for the Graph emulator. Reads its
config as JSON on stdin, prints one JSON line. Imports nothing from the project (its venv has none
of the project's packages).
"""

from __future__ import annotations

import json
import sys
import time

_started = time.perf_counter()
import asyncio  # noqa: E402
from collections import Counter  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import Any  # noqa: E402

from azure.core.credentials import AccessToken  # noqa: E402
from kiota_abstractions.api_error import APIError  # noqa: E402
from msgraph_beta import GraphServiceClient  # noqa: E402
from msgraph_beta.generated.models.device_compliance_script_device_state import (  # noqa: E402
    DeviceComplianceScriptDeviceState,
)
from msgraph_beta.generated.models.run_state import RunState  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _started


class StaticTokenCredential:
    """An async TokenCredential that always returns one bearer token."""

    def __init__(self, token: str) -> None:
        self._token = AccessToken(token, int(time.time()) + 3600)

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return self._token

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticTokenCredential:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def model(body: dict[str, Any]) -> DeviceComplianceScriptDeviceState:
    return DeviceComplianceScriptDeviceState(
        odata_type=body["@odata.type"],
        detection_state=RunState(body["detectionState"]),
        last_state_update_date_time=_when(body["lastStateUpdateDateTime"]),
        expected_state_update_date_time=_when(body["expectedStateUpdateDateTime"]),
        last_sync_date_time=_when(body["lastSyncDateTime"]),
        script_output=body["scriptOutput"],
        script_error=body["scriptError"],
    )


async def run(config: dict[str, Any]) -> dict[str, Any]:
    script, devices, body = config["script"], config["devices"], config["body"]
    built = time.perf_counter()
    client = GraphServiceClient(StaticTokenCredential(config["token"]), scopes=[config["scope"]])
    client.request_adapter.base_url = config["graph_url"]
    build_seconds = time.perf_counter() - built
    scripts = client.device_management.device_compliance_scripts
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    delivered = 0

    async def one(device: str) -> None:
        nonlocal delivered
        states = scripts.by_device_compliance_script_id(script).device_run_states
        item = states.by_device_compliance_script_device_state_id(f"{script}:{device}")
        try:
            await item.patch(model(body))
        except APIError as exc:
            statuses[str(exc.response_status_code)] += 1
            errors[f"APIError {exc.response_status_code}"] += 1
        except Exception as exc:  # what a caller of the SDK would see: record its type
            statuses["exception"] += 1
            errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
        else:
            statuses["200"] += 1
            delivered += 1

    first, first_call_seconds = time.perf_counter(), 0.0
    for index, device in enumerate(devices[: config["warmup"]]):
        await one(device)
        if index == 0:
            first_call_seconds = time.perf_counter() - first
    statuses.clear()
    errors.clear()
    delivered = 0
    timed = devices[config["warmup"] :]
    wall, cpu = time.perf_counter(), time.process_time()
    for device in timed:
        await one(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "client": "sdk",
        "n": len(timed),
        "wall": wall,
        "cpu": cpu,
        "delivered": delivered,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "import_seconds": IMPORT_SECONDS,
        "build_seconds": build_seconds,
        "first_call_seconds": first_call_seconds,
    }


def main() -> int:
    config = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(run(config))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
