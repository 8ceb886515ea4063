"""Test harness: real processes and servers on 127.0.0.1 ephemeral ports, stopped by PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
INGEST = "/api/v1/compliance-script-results"
DEVICE = "6f1b4c2e-8d3a-4b7e-9c1f-2a5d8e9b0c11"
SCRIPT = "3c9e7a1d-5b2f-4e8c-a6d4-1f0b9e8c7a25"
CLIENT_ID = "00000000-0000-0000-0000-00000000b71d"
READY_TIMEOUT = 30
# For in-process tests refused before anything is stored: storage that answers nothing.
UNREACHABLE_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
)


@dataclass
class Process:
    """A devstack part running as its own process; its stderr is kept for failure messages."""

    popen: subprocess.Popen[str]
    url: str
    ready: dict[str, Any]
    log: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)

    @property
    def output(self) -> str:
        return "".join(self.log)


def start_process(args: list[str], env: dict[str, str] | None = None) -> Process:
    """Start `python -m devstack ...` and wait for its JSON ready line."""
    full_env = {**os.environ, **(env or {})}
    popen = subprocess.Popen(
        [sys.executable, "-m", "devstack", *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []

    def drain(stream: Any) -> None:
        for line in stream:
            log.append(line)

    threading.Thread(target=drain, args=(popen.stderr,), daemon=True).start()
    ready: dict[str, Any] = {}
    timer = threading.Timer(READY_TIMEOUT, popen.kill)
    timer.start()
    try:
        for line in popen.stdout:  # type: ignore[union-attr]
            try:
                ready = json.loads(line)
            except ValueError:
                log.append(line)
                continue
            if isinstance(ready, dict) and "ready" in ready:
                break
    finally:
        timer.cancel()
    if not ready:
        popen.kill()
        raise RuntimeError(f"devstack {args} did not start:\n{''.join(log)}")
    threading.Thread(target=drain, args=(popen.stdout,), daemon=True).start()
    return Process(popen, ready.get("url") or ready.get("host", ""), ready, log)


class Emulator:
    """Admin client for an emulator's `/_emulator` endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url

    def reset(self) -> None:
        requests.post(f"{self.url}/_emulator/reset", timeout=5).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/_emulator/requests", timeout=5)
        response.raise_for_status()
        return response.json()["requests"]

    def post(self, path: str, payload: Any) -> None:
        requests.post(f"{self.url}/_emulator/{path}", json=payload, timeout=5).raise_for_status()

    def states(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/_emulator/states", timeout=5)
        response.raise_for_status()
        return response.json()["states"]


class LogsEmulator(Emulator):
    """Admin client for the Logs Ingestion emulator: its rows, requests, faults and settings."""

    def rows(self, stream: str | None = None) -> list[dict[str, Any]]:
        params = {"stream": stream} if stream else None
        response = requests.get(f"{self.url}/_emulator/rows", params=params, timeout=5)
        response.raise_for_status()
        return response.json()["rows"]

    def faults(self, rules: list[dict[str, Any]]) -> None:
        self.post("faults", rules)

    def config(self, **settings: Any) -> dict[str, Any]:
        response = requests.post(f"{self.url}/_emulator/config", json=settings, timeout=5)
        response.raise_for_status()
        return response.json()

    def settings(self) -> dict[str, str]:
        """The bridge's BRIDGE_LOGS_* settings that point it at this emulator."""
        config = requests.get(f"{self.url}/_emulator/config", timeout=5).json()
        [stream, *_] = sorted(config["streams"])
        return {
            "BRIDGE_LOGS_ENDPOINT": self.url,
            "BRIDGE_LOGS_RULE_ID": config["ruleId"],
            "BRIDGE_LOGS_STREAM": stream,
        }


# A host that lives across tests (sync mode, graph only) runs no queue trigger: it would take
# other tests' queued messages from the shared Azurite with settings that are not theirs.
NO_QUEUE_TRIGGERS = {
    f"AzureWebJobs.deliver_{destination}.Disabled": "true"
    for destination in ("graph", "logs", "entra")
}


def host_env(graph_url: str, identity_url: str, header: str, **settings: str) -> dict[str, str]:
    """The same settings Azure would give the app, pointed at the local emulators."""
    return {
        "GRAPH_BASE_URL": f"{graph_url}/beta",
        "IDENTITY_ENDPOINT": f"{identity_url}/msi/token",
        "IDENTITY_HEADER": header,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "BRIDGE_DELIVERY_MODE": "sync",
        **settings,
    }


def report_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "deviceId": DEVICE,
        "scriptId": SCRIPT,
        "execution": {
            "exitCode": 0,
            "stdout": '{"BitLocker":"On"}',
            "stderr": "",
            "startedAt": "2026-11-28T10:00:00Z",
            "finishedAt": "2026-11-28T10:00:02Z",
            "timedOut": False,
        },
    }
    body.update(overrides)
    return body


HostFactory = Callable[..., Process]


class StorageView:
    """Read and reset what the bridge keeps in Azurite, through the bridge's own Storage."""

    def __init__(self, connection_string: str) -> None:
        from shared.settings import Settings
        from shared.store import Storage

        self.connection_string = connection_string
        self.storage = Storage(Settings(AzureWebJobsStorage=connection_string))
        self.storage.ensure()

    def clear(self) -> None:
        for queue in self.storage.queues.values():
            queue.clear_messages()
        for entity in list(self.storage.table.list_entities()):
            self.storage.table.delete_entity(entity["PartitionKey"], entity["RowKey"])

    def poison(self, destination: str = "graph") -> list[dict[str, Any]]:
        """Every poison message of a destination, read without taking it off the queue."""
        queue = self.storage.queue(destination, poison=True)
        return [json.loads(m.content) for m in queue.peek_messages(max_messages=32)]

    def queued(self, destination: str = "graph") -> int:
        queue = self.storage.queue(destination)
        return queue.get_queue_properties().approximate_message_count

    def row(self, script_id: str, device_id: str) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return dict(self.storage.table.get_entity(script_id, device_id))
        except ResourceNotFoundError:
            return None


def busiest_window(times: list[float], width: float) -> int:
    """The most events any window of `width` seconds holds (Intune counts in 20 s windows)."""
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + width) for i, start in enumerate(times))


def wait_for(condition: Callable[[], Any], timeout: float = 30, interval: float = 0.1) -> Any:
    """Poll until `condition()` is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
