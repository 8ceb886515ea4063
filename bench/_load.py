"""Putting reports into the bridge: in process through shared.api.ingest, or over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from bench import _stack as s

HEADERS = {"Content-Type": "application/json"}


def queue_bridge(storage_connection: str, **settings: str) -> Any:
    """A Bridge in queue mode on Azurite, built in this process (Graph is never called)."""
    from shared.runtime import Bridge
    from shared.settings import Settings

    env = {
        "BRIDGE_DELIVERY_MODE": "queue",
        "AzureWebJobsStorage": storage_connection,
        "AZURE_CLIENT_ID": s.CLIENT_ID,
        **settings,
    }
    return Bridge.from_settings(Settings.from_env(env))


def clear_storage(bridge: Any) -> None:
    storage = bridge.storage
    for queue in storage.queues.values():
        queue.clear_messages()
    for entity in list(storage.table.list_entities()):
        storage.table.delete_entity(entity["PartitionKey"], entity["RowKey"])


def queued(bridge: Any) -> int:
    return bridge.storage.queue("graph").get_queue_properties().approximate_message_count


def ingest_in_process(bridge: Any, reports: Iterable[dict[str, Any]], threads: int = 1) -> Counter:
    """Call shared.api.ingest for each report; returns a count of the HTTP statuses it answered."""
    from shared.api import ingest

    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def one(report: dict[str, Any]) -> None:
        response = ingest("POST", HEADERS, json.dumps(report).encode(), bridge=bridge)
        with lock:
            statuses[response.status] += 1

    if threads == 1:
        for report in reports:
            one(report)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, reports))
    return statuses


@dataclass
class HttpLoad:
    """The answers and latencies of one HTTP load run."""

    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0


def post_http(url: str, reports: list[dict[str, Any]], concurrency: int) -> HttpLoad:
    """POST every report to the ingest route from `concurrency` threads, one session each."""
    load = HttpLoad()
    lock = threading.Lock()
    bodies = [json.dumps(r).encode() for r in reports]
    cursor = iter(range(len(bodies)))
    cursor_lock = threading.Lock()
    target = url + s.INGEST

    def worker() -> None:
        session = requests.Session()
        mine_latency: list[float] = []
        mine_status: Counter[int] = Counter()
        while True:
            with cursor_lock:
                index = next(cursor, None)
            if index is None:
                break
            started = time.perf_counter()
            try:
                status = session.post(target, data=bodies[index], headers=HEADERS, timeout=60)
                code = status.status_code
            except requests.RequestException:
                code = 0
            mine_latency.append(time.perf_counter() - started)
            mine_status[code] += 1
        with lock:
            load.latencies.extend(mine_latency)
            load.statuses.update(mine_status)

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    load.wall = time.perf_counter() - started
    return load
