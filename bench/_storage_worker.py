"""Counts the Azure Storage calls of ingest and queue delivery, in one process of a given tree.

Run by bench/storage_calls.py with the tree to measure as its working directory (the current
one, or an older checkout): config on stdin, one JSON line out. It imports only what both trees
have (`shared.api.ingest`, the queue trigger's body `on_queue_message`: in `shared.runtime`, or
in `shared.delivery` in older trees), and
counts every request the storage SDKs send through azure-core's RequestsTransport to Azurite's
ports; the Graph and identity calls go elsewhere and are not counted.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, os.getcwd())

SCRIPT = "3c9e7a1d-5b2f-4e8c-a6d4-1f0b9e8c7a25"
counts: Counter[str] = Counter()
ports: dict[int, str] = {}
# Who makes the call: the bridge's code, or the queue trigger (the Functions host in Azure).
caller = ["bridge"]


def _kind(service: str, method: str, path: str) -> str:
    """A storage call by what it does: 'table read', 'queue send', ..."""
    if service == "table":
        if method == "GET":
            return "table read" if "(" in path else "table query"
        if method == "POST":
            return "table create"
        return "table write" if method in ("PUT", "PATCH", "MERGE") else f"table {method}"
    if service == "queue":
        if path.endswith("/messages"):
            return {"POST": "queue send", "GET": "queue receive"}.get(method, f"queue {method}")
        return {"DELETE": "queue delete", "PUT": "queue update"}.get(method, f"queue {method}")
    return f"blob {method}"


def _count_calls() -> None:
    from azure.core.pipeline.transport import RequestsTransport

    send = RequestsTransport.send

    def counted(self: Any, request: Any, **kwargs: Any) -> Any:
        url = urlsplit(request.url)
        service = ports.get(url.port or 0)
        if service is not None:
            counts[f"{caller[0]}: {_kind(service, request.method, url.path)}"] += 1
        return send(self, request, **kwargs)

    RequestsTransport.send = counted  # type: ignore[method-assign]


def _report(device: str, finished: datetime, stdout: str) -> bytes:
    return json.dumps(
        {
            "deviceId": device,
            "scriptId": SCRIPT,
            "execution": {
                "exitCode": 0,
                "stdout": stdout,
                "stderr": "",
                "startedAt": (finished - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "finishedAt": finished.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "timedOut": False,
            },
        }
    ).encode()


def main() -> None:
    config = json.loads(sys.stdin.read())
    os.environ.update(config["env"])
    for part in config["env"]["AzureWebJobsStorage"].split(";"):
        key, _, value = part.partition("=")
        if key.endswith("Endpoint"):
            ports[urlsplit(value).port or 0] = key.removesuffix("Endpoint").lower()
    _count_calls()
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    from shared import delivery, runtime
    from shared.api import ingest

    on_queue_message = getattr(runtime, "on_queue_message", None) or delivery.on_queue_message
    four = len(inspect.signature(on_queue_message).parameters) >= 3
    queue = QueueClient.from_connection_string(
        config["env"]["AzureWebJobsStorage"],
        "compliance-results",
        message_decode_policy=TextBase64DecodePolicy(),
    )
    headers = {"Content-Type": "application/json"}
    n = config["n"]
    devices = [str(uuid.uuid4()) for _ in range(n + 1)]
    base = datetime.now(UTC) - timedelta(minutes=10)
    results: dict[str, Any] = {}

    def deliver(expected: int) -> Counter[str]:
        outcomes: Counter[str] = Counter()
        deadline = time.monotonic() + config.get("timeout", 240)
        while sum(outcomes.values()) < expected and time.monotonic() < deadline:
            caller[0] = "trigger"
            batch = list(
                queue.receive_messages(
                    max_messages=16, messages_per_page=16, visibility_timeout=120
                )
            )
            if not batch:
                time.sleep(0.5)
                continue
            for message in batch:
                caller[0] = "bridge"
                args = ("graph",) if four else ()
                out = on_queue_message(*args, message.content, message.dequeue_count)
                for each in out if isinstance(out, list) else [out]:
                    name = getattr(each, "outcome", None) or each.event  # the older name
                    if name != "retried":
                        outcomes[f"{name}:{each.reason}"] += 1
                caller[0] = "trigger"
                queue.delete_message(message)
        caller[0] = "bridge"
        return outcomes

    def phase(name: str, work: Any) -> None:
        counts.clear()
        answer = work()
        results[name] = {"counts": dict(counts), "answer": dict(answer)}

    def ingest_all(devices: list[str], finished: datetime, stdout: str) -> Counter[int]:
        statuses: Counter[int] = Counter()
        for device in devices:
            statuses[ingest("POST", headers, _report(device, finished, stdout)).status] += 1
        return statuses

    # Warm up: the first request builds the clients and (locally) creates queues and table.
    ingest_all(devices[:1], base, "warm")
    deliver(1)
    phase("ingest, new pair", lambda: ingest_all(devices[1:], base, "v1"))
    phase("delivery, first write", lambda: deliver(n))
    later = base + timedelta(minutes=1)
    phase("ingest, existing pair", lambda: ingest_all(devices[1:], later, "v1"))
    phase("delivery, same state", lambda: deliver(n))
    latest = base + timedelta(minutes=2)
    phase("ingest, changed state", lambda: ingest_all(devices[1:], latest, "v2"))
    phase("delivery, changed state", lambda: deliver(n))
    print(json.dumps({"n": n, "phases": results}))


if __name__ == "__main__":
    main()
