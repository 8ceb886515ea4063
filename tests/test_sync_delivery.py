"""Sync mode end to end: a report in over HTTP, a PATCH out as the managed identity, and back."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import requests

from tests.stack import (
    DEVICE,
    INGEST,
    SCRIPT,
    Emulator,
    HostFactory,
    Process,
    StorageView,
    busiest_window,
    report_body,
    wait_for,
)

GRAPH_DATETIME = re.compile(
    r"^[0-9]{4,}-(0[1-9]|1[012])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"([.][0-9]{1,12})?Z$"
)
WRITABLE = {
    "detectionState",
    "lastStateUpdateDateTime",
    "expectedStateUpdateDateTime",
    "lastSyncDateTime",
    "scriptOutput",
    "scriptError",
}
RUN_STATES = {"unknown", "success", "fail", "scriptError", "pending", "notApplicable"}


def post(host: Process, body: dict[str, Any]) -> requests.Response:
    return requests.post(host.url + INGEST, json=body, timeout=60)


def patches(graph: Emulator) -> list[dict[str, Any]]:
    return [r for r in graph.requests() if r["method"] == "PATCH"]


def test_report_is_delivered_and_the_mapped_state_can_be_read_back(
    host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    response = post(host, report_body(reportId="r-1"))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "delivered"
    assert response.json()["reportId"] == "r-1"
    [state] = graph.states()
    assert state["scriptId"] == SCRIPT
    assert state["runStateId"] == f"{SCRIPT}:{DEVICE}"
    assert state["detectionState"] == "success"
    assert state["lastStateUpdateDateTime"] == "2026-11-28T10:00:02Z"
    assert state["expectedStateUpdateDateTime"] == "2026-11-28T18:00:02Z"
    assert state["scriptOutput"] == '{"BitLocker":"On"}'
    [call] = patches(graph)
    assert uuid.UUID(call["client_request_id"])
    assert response.json()["graphRequestId"] == call["request_id"]


def test_every_patch_body_matches_the_entity(
    host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    bodies = [report_body(detectionState=state, deviceId=str(uuid.uuid4())) for state in RUN_STATES]
    bodies.append(
        {
            "deviceId": DEVICE,
            "scriptId": SCRIPT,
            "state": {
                "detectionState": "notApplicable",
                "lastStateUpdateDateTime": "2026-11-28T01:00:00.123456789-08:00",
                "scriptOutput": "n/a",
            },
        }
    )
    bodies.append(report_body(execution={**report_body()["execution"], "exitCode": 3}))
    for body in bodies:
        assert post(host, body).status_code == 200
    sent = patches(graph)
    assert len(sent) == len(bodies)
    for call in sent:
        body = call["body"]
        assert set(body) == {"@odata.type", *WRITABLE}
        assert body["@odata.type"] == "#microsoft.graph.deviceComplianceScriptDeviceState"
        assert body["detectionState"] in RUN_STATES
        for key in ("lastStateUpdateDateTime", "expectedStateUpdateDateTime", "lastSyncDateTime"):
            assert GRAPH_DATETIME.match(body[key]), body[key]
        assert "id" not in body
    assert {call["body"]["detectionState"] for call in sent} == RUN_STATES


def test_hundred_reports_cost_one_token_request(
    start_host: HostFactory, emulators: tuple[Emulator, Emulator]
) -> None:
    _, identity = emulators
    host = start_host()
    session = requests.Session()
    for n in range(100):
        body = report_body(deviceId=str(uuid.UUID(int=n + 1)))
        assert session.post(host.url + INGEST, json=body, timeout=60).status_code == 200
    assert len(identity.requests()) == 1


def test_live_route_refusal_is_a_permanent_502_naming_the_reason_and_request_id(
    host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    graph.post(
        "faults",
        [{"status": 400, "code": "No method match route template", "message": "No OData route"}],
    )
    response = post(host, report_body())
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["reason"] == "endpoint_unsupported"
    [call] = patches(graph)
    assert problem["graph"]["requestId"] == call["request_id"]
    assert call["request_id"] in problem["detail"]
    assert graph.states() == []


def finished(second: int) -> dict[str, Any]:
    return report_body(
        execution={**report_body()["execution"], "finishedAt": f"2026-11-28T10:00:{second:02d}Z"}
    )


def test_sync_mode_answers_duplicates_and_stale_reports_like_queue_mode(
    host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    newer, older = finished(30), finished(10)
    assert post(host, newer).json()["status"] == "delivered"
    again = post(host, newer)
    assert (again.status_code, again.json()["status"], again.json()["reason"]) == (
        200,
        "ignored",
        "duplicate",
    )
    stale = post(host, older)
    assert (stale.status_code, stale.json()["reason"]) == (200, "stale")
    assert len(patches(graph)) == 1  # neither the duplicate nor the older state reached Graph
    [state] = graph.states()
    assert state["lastStateUpdateDateTime"].startswith("2026-11-28T10:00:30")


def test_a_permanent_refusal_in_sync_mode_is_dead_lettered_once_with_its_reason(
    host: Process, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, _ = emulators
    graph.post("faults", [{"status": 400, "code": "No method match route template"}])
    response = post(host, finished(40))
    assert response.status_code == 502
    assert response.json()["type"].endswith(":graph-endpoint-unsupported")
    [poisoned] = storage.poison()
    assert poisoned["reason"] == "endpoint_unsupported"
    assert poisoned["error"]["code"] == "No method match route template"
    assert poisoned["report"]["deviceId"] == DEVICE
    # The agent drops it on 502 graph-*; if it sends it anyway, nothing is written twice.
    assert post(host, finished(40)).json()["reason"] == "duplicate"
    assert len(storage.poison()) == 1


def test_a_transient_failure_in_sync_mode_gives_the_acceptance_back(
    host: Process, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, _ = emulators
    graph.post("faults", [{"status": 503, "count": 10}])
    assert post(host, finished(50)).status_code == 503
    graph.post("faults", [])
    # The agent keeps the report and sends it again: it is accepted, not a "duplicate".
    assert post(host, finished(50)).json()["status"] == "delivered"
    assert storage.poison() == []


def test_three_sync_hosts_under_a_burst_keep_every_window_within_the_shared_budget(
    start_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, _ = emulators
    graph.post("config", {"writeLimit": "200/20"})
    budget = 4.0
    settings = {
        "BRIDGE_GRAPH_WRITES_PER_SECOND": str(budget),
        "BRIDGE_DEVICE_RATE_LIMIT": "0",
        "BRIDGE_SYNC_MAX_WAIT": "2s",
    }
    hosts = [start_host(**settings) for _ in range(3)]
    bodies = [report_body(deviceId=str(uuid.uuid4())) for _ in range(150)]
    pending = list(bodies)
    answers: dict[int, int] = {}
    session = requests.Session()
    deadline = time.monotonic() + 150  # the agents' retries, bounded
    while pending and time.monotonic() < deadline:
        with ThreadPoolExecutor(12) as pool:
            sent = list(
                pool.map(
                    lambda pair: session.post(
                        hosts[pair[0] % 3].url + INGEST, json=pair[1], timeout=60
                    ),
                    enumerate(pending),
                )
            )
        waits = []
        for response in sent:
            answers[response.status_code] = answers.get(response.status_code, 0) + 1
            if response.status_code == 503:
                waits.append(int(response.headers["Retry-After"]))
        assert all(wait >= 1 for wait in waits)
        pending = [b for b, r in zip(pending, sent, strict=True) if r.status_code == 503]
        if waits:
            time.sleep(min(*waits, 5))  # as an agent does: back after Retry-After
    assert set(answers) <= {200, 503}
    assert answers.get(503), "the burst never outran the budget: the test proved nothing"
    wait_for(lambda: len(graph.states()) == len(bodies), timeout=10)
    writes = [r for r in graph.requests() if r["method"] == "PATCH"]
    assert [r for r in writes if r["status"] == 429] == []
    times = [datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp() for r in writes]
    assert busiest_window(times, 20) <= budget * 20


def test_missing_app_role_is_a_permanent_forbidden(
    start_host: HostFactory, emulators: tuple[Emulator, Emulator]
) -> None:
    _, identity = emulators
    identity.post("config", {"roles": []})
    try:
        response = post(start_host(), report_body())
    finally:
        identity.reset()
    assert response.status_code == 502
    assert response.json()["reason"] == "forbidden"
    assert response.json()["graph"]["code"] == "Forbidden"


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"status": 429, "retryAfter": "0.2", "count": 2}, id="429-fractional"),
        pytest.param({"status": 429, "retryAfter": "1", "count": 1}, id="429-integer"),
        pytest.param({"status": 503, "count": 2}, id="503-backoff"),
        pytest.param({"status": 504, "count": 1}, id="504"),
        pytest.param({"drop": True, "count": 2}, id="dropped-connection"),
    ],
)
def test_transient_failures_are_retried_within_the_sync_budget(
    host: Process, emulators: tuple[Emulator, Emulator], fault: dict[str, Any]
) -> None:
    graph, _ = emulators
    graph.post("faults", [fault])
    response = post(host, report_body())
    assert response.status_code == 200, response.text
    assert len(graph.states()) == 1


def test_persistent_throttling_answers_503_with_retry_after(
    host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    graph.post("faults", [{"status": 429, "retryAfter": "37"}])
    response = post(host, report_body())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "37"
    assert response.json()["reason"] == "throttled"
    assert len(patches(graph)) == 1  # 37 s is beyond the sync budget: no pointless second try


def test_slow_graph_past_the_read_timeout_is_transient(
    start_host: HostFactory, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    host = start_host(BRIDGE_GRAPH_READ_TIMEOUT="0.5", BRIDGE_SYNC_ATTEMPTS="1")
    graph.post("faults", [{"delay": 2, "count": 1}])
    response = post(host, report_body())
    assert response.status_code == 503, response.text
    assert response.json()["reason"] == "timeout"
    assert int(response.headers["Retry-After"]) >= 1


def test_health_needs_no_credentials_and_shows_no_secrets(host: Process) -> None:
    response = requests.get(host.url + "/api/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    text = response.text.lower()
    for word in ("header", "token", "secret", "identity_endpoint"):
        assert word not in text


def test_script_outside_the_allow_list_is_refused_before_graph(
    start_host: HostFactory, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    host = start_host(BRIDGE_ALLOWED_SCRIPT_IDS=str(uuid.uuid4()))
    response = post(host, report_body())
    assert response.status_code == 403
    assert response.json()["type"].endswith(":script-not-allowed")
    assert graph.requests() == []
