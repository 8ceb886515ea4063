"""Logs destination: rows per second and Logs Ingestion calls per 1,000 reports, batched or not.

    python -m bench.logs_rows [--n 1000] [--json PATH]

A backlog of `--n` accepted reports waits in `compliance-logs` (Azurite); the bridge's own
`Delivery` drains it the way the queue trigger would (one message per invocation, the backlog
behind it riding in the same call), into the Logs Ingestion emulator through the real
azure-monitor-ingestion client and the real managed-identity credential. The same backlog is
then drained with one report per call (batch 1), side by side.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from bench import _stack as s


def backlog(storage: Any, n: int) -> None:
    from shared import messages
    from shared.mapping import DeviceState
    from shared.models import DetectionState

    now = datetime.now(UTC)
    for index in range(n):
        state = DeviceState(
            detection_state=DetectionState.SUCCESS,
            last_state_update=now - timedelta(minutes=5),
            expected_state_update=now + timedelta(hours=8),
            last_sync=now,
            script_output=json.dumps({"BitLocker": "On", "n": index}),
            script_error="",
        )
        storage.enqueue(
            messages.build(
                "logs",
                report_id=uuid.uuid4().hex,
                script_id=s.SCRIPT,
                device_id=str(uuid.uuid4()),
                state=state,
                received_at=now,
            )
        )


def drain(delivery: Any, storage: Any) -> int:
    """The queue trigger's loop, in process: receive one, process it (it drains more), delete."""
    queue = storage.queue("logs")
    outcomes = 0
    while True:
        batch = list(queue.receive_messages(max_messages=1, visibility_timeout=60))
        if not batch:
            return outcomes
        for message in batch:
            outcomes += len(delivery.process(message.content, message.dequeue_count))
            queue.delete_message(message)


def run(n: int) -> dict[str, Any]:
    import os

    header = secrets.token_urlsafe(16)
    _, connection = s.start_azurite()
    identity = s.start_identity(header)
    logs = s.start_devstack("logs")
    os.environ.update({"IDENTITY_ENDPOINT": f"{identity.url}/msi/token", "IDENTITY_HEADER": header})
    from shared.runtime import Bridge
    from shared.settings import Settings

    settings = Settings.from_env(
        {
            "AzureWebJobsStorage": connection,
            "AZURE_CLIENT_ID": s.CLIENT_ID,
            "BRIDGE_DESTINATIONS": "logs",
            "BRIDGE_LOGS_ENDPOINT": logs.url,
            "BRIDGE_LOGS_RULE_ID": logs.ready["ruleId"],
            "BRIDGE_LOGS_STREAM": logs.ready["streams"][0],
        }
    )
    bridge = Bridge.from_settings(settings)
    delivery = bridge.delivery("logs")
    figures: dict[str, Any] = {"n": n}
    for label, batch in (("batched", delivery.destination.batch), ("one per call", 1)):
        requests.post(f"{logs.url}/_emulator/reset", timeout=5).raise_for_status()
        backlog(bridge.storage, n)
        delivery.destination.batch = batch
        started = time.perf_counter()
        outcomes = drain(delivery, bridge.storage)
        wall = time.perf_counter() - started
        calls = requests.get(f"{logs.url}/_emulator/requests", timeout=5).json()["count"]
        rows = requests.get(f"{logs.url}/_emulator/rows", timeout=5).json()["count"]
        figures[label] = {
            "batch": batch,
            "outcomes": outcomes,
            "rows": rows,
            "calls": calls,
            "calls_per_1000_reports": round(calls / n * 1000, 1),
            "rows_per_s": round(rows / wall, 1),
        }
    figures["rows_per_s_ratio"] = round(
        figures["batched"]["rows_per_s"] / figures["one per call"]["rows_per_s"], 2
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.logs_rows", description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    s.deadline(600)
    figures = run(args.n)
    for label in ("batched", "one per call"):
        f = figures[label]
        print(
            f"{label:>13}: {f['rows']} rows of {args.n} reports in {f['calls']} calls "
            f"({f['calls_per_1000_reports']} per 1,000 reports), {f['rows_per_s']} rows/s"
        )
    calls = figures["one per call"]["calls"] / max(figures["batched"]["calls"], 1)
    print(f"Logs Ingestion calls, one per call / batched: {calls:.1f}")
    print(f"rows per second, batched / one per call: {figures['rows_per_s_ratio']}")
    print(
        "(locally both are bound by the queue's per-message receive and delete, not by the\n"
        " ingestion call; against Azure each saved call is a network round trip)"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    s.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
