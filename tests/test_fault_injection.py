"""Everything failing at once: nothing is lost, nothing older overwrites newer, Graph is paced.

1,100+ reports over 105 (script, device) pairs, ten versions each, sent shuffled and with
duplicates, while the Graph emulator injects 429 (integer, fractional and HTTP-date Retry-After),
503, 504, answers slower than the read timeout and drops connections; the identity endpoint fails
for a while; and the function host is killed with SIGKILL mid-run and started again. Bounded: the
whole test stops by itself within its time budget.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import requests

from tests.stack import INGEST, SCRIPT, Emulator, HostFactory, Process, StorageView, wait_for

PAIRS = 100
VERSIONS = 10
DUPLICATES = 150
WRITES_PER_SECOND = 9.0
INTUNE_WRITES_PER_20S = 200
# Each rule names a device whose only report Graph refuses for good, and the reason expected.
PERMANENT = [
    ({"status": 400, "code": "No method match route template"}, "endpoint_unsupported"),
    ({"status": 400, "code": "No method match route template"}, "endpoint_unsupported"),
    ({"status": 403, "code": "Forbidden"}, "forbidden"),
    ({"status": 404, "code": "ResourceNotFound"}, "not_found"),
    ({"status": 400, "code": "BadRequest"}, "bad_request"),
]
SETTINGS = {
    "BRIDGE_GRAPH_READ_TIMEOUT": "1",
    "BRIDGE_GRAPH_CONNECT_TIMEOUT": "1",
    # Must outlast a write Graph applies after the client gave up (the 2 s slow answers below).
    "BRIDGE_DELIVERY_LEASE": "6s",  # more than connect + read timeout + the 3 s budget wait
    "BRIDGE_GRAPH_WRITES_PER_SECOND": str(WRITES_PER_SECOND),
    "BRIDGE_DEVICE_RATE_LIMIT": "0",
    "BRIDGE_MAX_ATTEMPTS": "60",
    # A killed host's messages come back after this (the real host: 10 minutes).
    "DEVSTACK_QUEUE_LEASE": "12",
}


def report(device: str, version: int, base: datetime) -> dict[str, Any]:
    finished = base + timedelta(seconds=version)
    return {
        "deviceId": device,
        "scriptId": SCRIPT,
        "reportId": f"{device[:8]}-v{version}",
        "execution": {
            "exitCode": 0 if version % 3 else 1,
            "stdout": json.dumps({"version": version}),
            "finishedAt": finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def transient_faults() -> list[dict[str, Any]]:
    """Probabilistic faults; the HTTP-date form is made afresh so it always lies ahead."""
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    return [
        {"status": 429, "retryAfter": "1", "probability": 0.04},
        {"status": 429, "retryAfter": "1.5", "probability": 0.04},
        {"status": 429, "retryAfter": soon, "probability": 0.04},
        {"status": 503, "probability": 0.03},
        {"status": 504, "probability": 0.03},
        {"delay": 2, "probability": 0.03},
        {"drop": True, "probability": 0.03},
    ]


class Sender:
    """A fleet of agents: retries connection errors and 503s like the reference agent does."""

    def __init__(self) -> None:
        self.url = ""
        self.answers: dict[str, list[int]] = defaultdict(list)
        self.lock = threading.Lock()

    def send(self, body: dict[str, Any]) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                response = requests.post(self.url + INGEST, json=body, timeout=10)
            except requests.RequestException:
                time.sleep(0.3)  # the host is down: the agent spools and tries again
                continue
            with self.lock:
                self.answers[body["reportId"]].append(response.status_code)
            if response.status_code < 500:
                return
            time.sleep(0.3)
        raise AssertionError(f"report {body['reportId']} was never accepted")


def kill(process: Process) -> None:
    os.kill(process.popen.pid, signal.SIGKILL)
    process.popen.wait(timeout=10)


def test_nothing_lost_nothing_regressed_and_graph_paced_under_every_fault(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, identity = emulators
    rng = random.Random(20261128)
    base = datetime.now(UTC) - timedelta(hours=1)
    devices = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(PAIRS)]
    doomed = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in PERMANENT]
    bodies = [report(d, v, base) for d in devices for v in range(VERSIONS)]
    bodies += rng.sample(bodies, DUPLICATES)
    bodies += [report(d, 0, base) for d in doomed]
    rng.shuffle(bodies)
    permanent_rules = [{**rule, "match": d} for d, (rule, _) in zip(doomed, PERMANENT, strict=True)]

    # Tokens live 3 s in the credential's cache (it treats the last 5 minutes as expired), so
    # the identity endpoint is asked often enough for its outage to matter.
    identity.post("config", {"lifetime": 303})
    graph.post("config", {"writeLimit": f"{INTUNE_WRITES_PER_20S}/20"})
    stop_faults = threading.Event()

    def refresh_faults() -> None:
        while not stop_faults.wait(1.0):
            graph.post("faults", permanent_rules + transient_faults())

    graph.post("faults", permanent_rules + transient_faults())
    refresher = threading.Thread(target=refresh_faults, daemon=True)
    refresher.start()

    sender = Sender()
    host = start_queue_host(**SETTINGS)
    sender.url = host.url
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(sender.send, body) for body in bodies]
            wait_for(lambda: sum(p["applied"] for p in graph.requests()) >= 60, timeout=60)
            identity.post("config", {"fail": {"status": 500, "seconds": 5}})
            wait_for(lambda: sum(p["applied"] for p in graph.requests()) >= 120, timeout=60)
            kill(host)
            time.sleep(1)
            host = start_queue_host(**SETTINGS)
            sender.url = host.url
            for future in futures:
                future.result(timeout=120)

        newest = {d: report(d, VERSIONS - 1, base) for d in devices}

        def caught_up() -> bool:
            states = {s["runStateId"].split(":")[1]: s for s in graph.states()}
            return all(
                d in states
                and states[d]["lastStateUpdateDateTime"] == newest[d]["execution"]["finishedAt"]
                for d in devices
            )

        wait_for(caught_up, timeout=150, interval=1)
        wait_for(lambda: len(drain_poison(storage)) >= len(PERMANENT), timeout=30)
    finally:
        stop_faults.set()
        refresher.join(timeout=5)
    elapsed = time.monotonic() - started

    # Exactly the newest report for every pair.
    states = {s["runStateId"].split(":")[1]: s for s in graph.states()}
    for device in devices:
        assert states[device]["scriptOutput"] == newest[device]["execution"]["stdout"]
    # No older report was ever written after a newer one, in the order Graph applied them.
    applied = [r for r in graph.requests() if r["method"] == "PATCH" and r["applied"]]
    last: dict[str, str] = {}
    for write in applied:
        pair = write["path"].rsplit("/", 1)[1]
        stamp = write["body"]["lastStateUpdateDateTime"]
        assert stamp >= last.get(pair, ""), f"{pair}: {stamp} written after {last[pair]}"
        last[pair] = stamp
    # Nothing lost: every report was answered, and none was refused for a reason of ours.
    assert set(sender.answers) == {b["reportId"] for b in bodies}
    assert all(codes[-1] in (200, 202) for codes in sender.answers.values())
    # The poison queue holds exactly the permanent cases, each with its reason.
    poisoned = drain_poison(storage)
    assert sorted((p["report"]["deviceId"], p["reason"]) for p in poisoned) == sorted(
        (d, reason) for d, (_, reason) in zip(doomed, PERMANENT, strict=True)
    )
    for message in poisoned:
        assert message["error"]["requestId"]
    # Paced: no 20-second window saw more writes than the configured rate (or Intune) allows.
    times = sorted(
        datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp()
        for r in graph.requests()
        if r["method"] == "PATCH"
    )
    busiest = max(sum(1 for t in times[i:] if t < start + 20) for i, start in enumerate(times))
    assert busiest <= min(INTUNE_WRITES_PER_20S, WRITES_PER_SECOND * 20 + 2), busiest
    # The faults really happened.
    statuses = [r["status"] for r in graph.requests()]
    assert {429, 503, 504} <= set(statuses)
    assert any(r.get("dropped") for r in graph.requests())
    assert elapsed < 180


def drain_poison(storage: StorageView) -> list[dict[str, Any]]:
    """Every poison message (more than the 32 a peek shows), left in place."""
    queue = storage.storage.queue("graph", poison=True)
    seen, messages = [], []
    for message in queue.receive_messages(max_messages=32, visibility_timeout=1):
        seen.append(json.loads(message.content))
        messages.append(message)
    for message in messages:
        queue.update_message(message, visibility_timeout=0)
    return seen
