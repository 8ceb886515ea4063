"""Sync mode end to end: a report in over HTTP, a PATCH out as the managed identity, and back."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import requests

from tests.stack import DEVICE, INGEST, SCRIPT, Emulator, HostFactory, Process, report_body

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
