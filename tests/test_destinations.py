"""Destinations: every accepted report reaches Log Analytics and Entra whatever Graph's route does.

Function hosts in their own processes against Azurite, the Graph emulator and the Logs Ingestion
emulator; the real azure-monitor-ingestion client and the real managed-identity credential.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.stack import (
    INGEST,
    SCRIPT,
    Emulator,
    HostFactory,
    LogsEmulator,
    StorageView,
    report_body,
    wait_for,
)

ROUTE_REFUSED = {"status": 400, "code": "No method match route template"}


@pytest.fixture
def logs(logs_emulator: LogsEmulator) -> LogsEmulator:
    logs_emulator.reset()
    return logs_emulator


def versioned(device: str, minutes_ago: int, state: str = "pass") -> dict[str, Any]:
    finished = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    execution = {
        "exitCode": 0 if state == "pass" else 1,
        "stdout": f'{{"check":"{state}","at":{minutes_ago}}}',
        "finishedAt": finished,
    }
    return report_body(deviceId=device, execution=execution, reportId=uuid.uuid4().hex)


def send(host: Any, body: dict[str, Any]) -> requests.Response:
    return requests.post(host.url + INGEST, json=body, timeout=60)


def test_graph_refusing_every_patch_leaves_every_accepted_report_in_log_analytics(
    start_queue_host: HostFactory,
    emulators: tuple[Emulator, Emulator],
    logs: LogsEmulator,
    storage: StorageView,
) -> None:
    graph, _ = emulators
    graph.post("faults", [ROUTE_REFUSED])
    # A Logs Ingestion outage in the middle: 503s, then 429 with Retry-After.
    logs.faults([{"status": 503, "count": 3}, {"status": 429, "retryAfter": "1", "count": 2}])
    host = start_queue_host(
        BRIDGE_DESTINATIONS="graph,logs", BRIDGE_DEVICE_RATE_LIMIT="0", **logs.settings()
    )
    devices = [str(uuid.uuid4()) for _ in range(8)]
    bodies = [versioned(d, m, "pass" if m % 2 else "fail") for d in devices for m in (30, 20, 10)]
    for body in bodies:
        assert send(host, body).status_code == 202

    rows = wait_for(lambda: (r := logs.rows()) and len(r) >= len(bodies) and r, timeout=90)
    by_report = {row["ReportId"]: row for row in rows}
    assert set(by_report) == {b["reportId"] for b in bodies}  # no row lost, none invented
    for body in bodies:
        row = by_report[body["reportId"]]
        assert (row["ScriptId"], row["DeviceId"]) == (SCRIPT, body["deviceId"])
        assert row["ScriptOutput"] == body["execution"]["stdout"]
        assert row["DetectionState"] == (
            "success" if body["execution"]["exitCode"] == 0 else "fail"
        )
        assert row["LastStateUpdateDateTime"] == body["execution"]["finishedAt"]
        assert row["ExpectedStateUpdateDateTime"] and row["LastSyncDateTime"]
    statuses = [r["status"] for r in logs.requests()]
    assert 503 in statuses and 429 in statuses  # the outage happened, and delayed rows only
    assert storage.poison("logs") == []
    # Graph refused each write it was given; those reports wait in graph's poison queue only.
    poisoned = wait_for(lambda: storage.poison("graph"), timeout=30)
    assert {p["reason"] for p in poisoned} == {"endpoint_unsupported"}
    assert graph.states() == []


def test_entra_attributes_hold_each_devices_newest_state_and_unknown_devices_poison_entra_only(
    start_queue_host: HostFactory,
    emulators: tuple[Emulator, Emulator],
    storage: StorageView,
) -> None:
    graph, identity = emulators
    unknown = str(uuid.uuid4())
    graph.post("config", {"autoRegisterDevices": True, "unknownDevices": [unknown]})
    identity.post(
        "config", {"roles": ["DeviceManagementConfiguration.ReadWrite.All", "Device.ReadWrite.All"]}
    )
    host = start_queue_host(
        BRIDGE_DESTINATIONS="graph,entra",
        BRIDGE_ENTRA_ATTRIBUTES=f"{SCRIPT}=3",
        BRIDGE_DEVICE_RATE_LIMIT="0",
    )
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    for body in (versioned(first, 30, "pass"), versioned(first, 20, "fail")):
        assert send(host, body).status_code == 202
    assert send(host, versioned(second, 25, "pass")).status_code == 202
    assert send(host, versioned(unknown, 25, "pass")).status_code == 202

    def attributes() -> dict[str, Any]:
        devices = requests.get(f"{graph.url}/_emulator/devices", timeout=5).json()["devices"]
        return {
            d["managedDeviceId"]: (d.get("extensionAttributes") or {}).get("extensionAttribute3")
            for d in devices
        }

    # When the older report's delivery holds the pair's lease, the newer one comes back when the
    # lease ends (BRIDGE_DELIVERY_LEASE, 60 s), not before: the wait must outlast one lease.
    wait_for(lambda: attributes().get(first) == "fail" and attributes().get(second), timeout=90)
    assert attributes()[second] == "success"
    [poisoned] = wait_for(lambda: storage.poison("entra"), timeout=30)
    assert (poisoned["reason"], poisoned["report"]["deviceId"]) == ("device_not_found", unknown)
    assert storage.poison("graph") == []
    # The graph destination delivers on its own queue, unaffected by entra's refusal.
    wait_for(
        lambda: {s["managedDeviceId"] for s in graph.states()} >= {first, second, unknown},
        timeout=30,
    )

    # A newer state for a device already resolved costs no second lookup.
    def lookups(device: str) -> int:
        return sum(1 for r in graph.requests() if f"managedDevices/{device}" in r["path"])

    assert lookups(first) == 1
    assert send(host, versioned(first, 5, "pass")).status_code == 202
    wait_for(lambda: attributes()[first] == "success", timeout=30)
    assert lookups(first) == 1


def test_sync_mode_answers_with_graph_and_the_row_arrives_anyway(
    start_host: HostFactory, emulators: tuple[Emulator, Emulator], logs: LogsEmulator
) -> None:
    graph, _ = emulators
    graph.post("faults", [ROUTE_REFUSED])
    host = start_host(BRIDGE_DESTINATIONS="graph,logs", **logs.settings())
    body = versioned(str(uuid.uuid4()), 10)
    response = send(host, body)
    assert response.status_code == 502
    assert response.json()["type"].endswith(":graph-endpoint-unsupported")
    [row] = wait_for(logs.rows, timeout=30)
    assert row["ReportId"] == body["reportId"]
    graph.post("faults", [])
    delivered = versioned(str(uuid.uuid4()), 10)
    assert send(host, delivered).json()["status"] == "delivered"
    wait_for(lambda: len(logs.rows()) == 2, timeout=30)


def test_lookup_finds_opaque_run_state_ids_and_caches_them(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, _ = emulators
    graph.post("config", {"runStateIds": "opaque", "autoRegisterDevices": True})
    host = start_queue_host(BRIDGE_RUN_STATE_ID_TEMPLATE="lookup", BRIDGE_DEVICE_RATE_LIMIT="0")
    devices = [str(uuid.uuid4()) for _ in range(3)]
    for device in devices:
        assert send(host, versioned(device, 20, "fail")).status_code == 202
    wait_for(lambda: len(graph.states()) == 3, timeout=60)
    states = {s["managedDeviceId"]: s for s in graph.states()}
    for device in devices:
        assert states[device]["detectionState"] == "fail"
        assert states[device]["runStateId"] != f"{SCRIPT}:{device}"  # not the template's id
    lists = [r for r in graph.requests() if r["method"] == "GET" and "deviceRunStates" in r["path"]]
    assert len(lists) == 3
    assert send(host, versioned(devices[0], 10, "pass")).status_code == 202
    wait_for(
        lambda: (
            {s["managedDeviceId"]: s for s in graph.states()}[devices[0]]["detectionState"]
            == "success"
        ),
        timeout=30,
    )
    lists = [r for r in graph.requests() if r["method"] == "GET" and "deviceRunStates" in r["path"]]
    assert len(lists) == 3  # the id came from the run-state row
    row = storage.row(SCRIPT, devices[0])
    assert row is not None and row["RunStateId"] == states[devices[0]]["runStateId"]
    assert storage.poison() == []
