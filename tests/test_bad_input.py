"""Malformed requests each get their own status and problem+json, and none of them reaches Graph."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from tests.stack import (
    DEVICE,
    INGEST,
    SCRIPT,
    UNREACHABLE_STORAGE,
    Emulator,
    Process,
    StorageView,
    report_body,
)

JSON = {"Content-Type": "application/json"}
MAX = 2 * 1024 * 1024


def execution(**changes: Any) -> dict[str, Any]:
    base = report_body()["execution"]
    base.update(changes)
    return base


def without(key: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    body = dict(body or report_body())
    body.pop(key)
    return body


STATE = {"detectionState": "fail", "lastStateUpdateDateTime": "2026-11-28T10:00:00Z"}

# (id, method, headers, body bytes, expected status, expected problem slug, expected field or None)
CASES: list[tuple[str, str, dict[str, str], bytes, int, str, str | None]] = [
    ("get", "GET", {}, b"", 405, "method-not-allowed", None),
    ("put", "PUT", JSON, json.dumps(report_body()).encode(), 405, "method-not-allowed", None),
    ("delete", "DELETE", {}, b"", 405, "method-not-allowed", None),
    ("patch", "PATCH", JSON, b"{}", 405, "method-not-allowed", None),
    ("no-content-type", "POST", {}, json.dumps(report_body()).encode(), 415, "unsupported-media-type", None),
    ("text-plain", "POST", {"Content-Type": "text/plain"}, b"{}", 415, "unsupported-media-type", None),
    ("form", "POST", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=b", 415, "unsupported-media-type", None),
    ("latin1-charset", "POST", {"Content-Type": "application/json; charset=iso-8859-1"}, b"{}", 415, "unsupported-media-type", None),
    ("oversize-bytes", "POST", JSON, b'{"x":"' + b"a" * MAX + b'"}', 413, "payload-too-large", None),
    ("empty-body", "POST", JSON, b"", 400, "invalid-json", None),
    ("broken-json", "POST", JSON, b'{"deviceId": ', 400, "invalid-json", None),
    ("trailing-garbage", "POST", JSON, b"{} {}", 400, "invalid-json", None),
    ("not-utf8", "POST", JSON, b'{"a":"\xff\xfe"}', 400, "invalid-json", None),
    ("nan", "POST", JSON, b'{"a": NaN}', 400, "invalid-json", None),
    ("duplicate-key", "POST", JSON, b'{"deviceId":"a","deviceId":"b"}', 400, "invalid-json", None),
    ("deep-nesting", "POST", JSON, b"[" * 5000 + b"]" * 5000, 400, "invalid-json", None),
    ("array-body", "POST", JSON, b"[]", 422, "invalid-report", "$"),
    ("string-body", "POST", JSON, b'"report"', 422, "invalid-report", "$"),
    ("unknown-top-field", "POST", JSON, json.dumps(report_body(admin=True)).encode(), 422, "invalid-report", "admin"),
    ("unknown-execution-field", "POST", JSON, json.dumps(report_body(execution=execution(command="rm"))).encode(), 422, "invalid-report", "execution.command"),
    ("missing-device", "POST", JSON, json.dumps(without("deviceId")).encode(), 422, "invalid-report", "deviceId"),
    ("missing-script", "POST", JSON, json.dumps(without("scriptId")).encode(), 422, "invalid-report", "scriptId"),
    ("non-guid-device", "POST", JSON, json.dumps(report_body(deviceId="laptop-42")).encode(), 422, "invalid-report", "deviceId"),
    ("newline-after-guid", "POST", JSON, json.dumps(report_body(deviceId=DEVICE + "\n")).encode(), 422, "invalid-report", "deviceId"),
    ("dotdot-device", "POST", JSON, json.dumps(report_body(deviceId="../../deviceManagement")).encode(), 422, "invalid-report", "deviceId"),
    ("encoded-slash-script", "POST", JSON, json.dumps(report_body(scriptId=f"{SCRIPT}%2F..")).encode(), 422, "invalid-report", "scriptId"),
    ("query-in-script", "POST", JSON, json.dumps(report_body(scriptId=f"{SCRIPT}?$select=id")).encode(), 422, "invalid-report", "scriptId"),
    ("fragment-in-device", "POST", JSON, json.dumps(report_body(deviceId=f"{DEVICE}#x")).encode(), 422, "invalid-report", "deviceId"),
    ("braced-guid", "POST", JSON, json.dumps(report_body(deviceId="{" + DEVICE + "}")).encode(), 422, "invalid-report", "deviceId"),
    ("numeric-device", "POST", JSON, json.dumps(report_body(deviceId=42)).encode(), 422, "invalid-report", "deviceId"),
    ("bad-report-id", "POST", JSON, json.dumps(report_body(reportId="a/b")).encode(), 422, "invalid-report", "reportId"),
    ("long-report-id", "POST", JSON, json.dumps(report_body(reportId="r" * 65)).encode(), 422, "invalid-report", "reportId"),
    ("naive-finished", "POST", JSON, json.dumps(report_body(execution=execution(finishedAt="2026-11-28T10:00:02"))).encode(), 422, "invalid-report", "execution.finishedAt"),
    ("far-future-finished", "POST", JSON, json.dumps(report_body(execution=execution(finishedAt="2099-01-01T00:00:00Z"))).encode(), 422, "invalid-report", "execution.finishedAt"),
    ("not-a-date", "POST", JSON, json.dumps(report_body(execution=execution(finishedAt="yesterday"))).encode(), 422, "invalid-report", "execution.finishedAt"),
    ("february-30", "POST", JSON, json.dumps(report_body(execution=execution(finishedAt="2026-02-30T10:00:00Z"))).encode(), 422, "invalid-report", "execution.finishedAt"),
    ("epoch-number-date", "POST", JSON, json.dumps(report_body(execution=execution(finishedAt=1764324000))).encode(), 422, "invalid-report", "execution.finishedAt"),
    ("missing-finished", "POST", JSON, json.dumps(report_body(execution=without("finishedAt", execution()))).encode(), 422, "invalid-report", "execution.finishedAt"),
    ("finished-before-started", "POST", JSON, json.dumps(report_body(execution=execution(startedAt="2026-11-28T11:00:00Z"))).encode(), 422, "invalid-report", "execution"),
    ("string-exit-code", "POST", JSON, json.dumps(report_body(execution=execution(exitCode="0"))).encode(), 422, "invalid-report", "execution.exitCode"),
    ("bool-timed-out-string", "POST", JSON, json.dumps(report_body(execution=execution(timedOut="no"))).encode(), 422, "invalid-report", "execution.timedOut"),
    ("enum-typo", "POST", JSON, json.dumps(report_body(detectionState="Success")).encode(), 422, "invalid-report", "detectionState"),
    ("enum-unknown-future", "POST", JSON, json.dumps(report_body(detectionState="unknownFutureValue")).encode(), 422, "invalid-report", "detectionState"),
    ("both-forms", "POST", JSON, json.dumps(report_body(state=STATE)).encode(), 422, "invalid-report", "$"),
    ("neither-form", "POST", JSON, json.dumps(without("execution")).encode(), 422, "invalid-report", "$"),
    ("id-in-state", "POST", JSON, json.dumps(without("execution", report_body(state={**STATE, "id": "x"}))).encode(), 422, "invalid-report", "state.id"),
    ("wrong-odata-type", "POST", JSON, json.dumps(without("execution", report_body(state={**STATE, "@odata.type": "#microsoft.graph.deviceHealthScriptDeviceState"}))).encode(), 422, "invalid-report", "state.@odata.type"),
    ("unknown-state-field", "POST", JSON, json.dumps(without("execution", report_body(state={**STATE, "managedDevice": {}}))).encode(), 422, "invalid-report", "state.managedDevice"),
    ("state-enum-typo", "POST", JSON, json.dumps(without("execution", report_body(state={**STATE, "detectionState": "failed"}))).encode(), 422, "invalid-report", "state.detectionState"),
    ("override-with-state", "POST", JSON, json.dumps(without("execution", report_body(state=STATE, detectionState="fail"))).encode(), 422, "invalid-report", "$"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "headers", "body", "status", "slug", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_malformed_request_gets_its_own_problem_and_never_reaches_graph(
    host: Process,
    emulators: tuple[Emulator, Emulator],
    method: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    slug: str,
    field: str | None,
) -> None:
    graph, _ = emulators
    response = requests.request(method, host.url + INGEST, headers=headers, data=body, timeout=30)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"].endswith(f":{slug}")
    assert problem["status"] == status
    assert problem["title"] and problem["detail"]
    if field is not None:
        assert field in [error["field"] for error in problem["errors"]], problem
    if status == 405:
        assert response.headers["Allow"] == "POST"
    assert graph.requests() == []


def test_the_bridge_refuses_at_least_thirty_distinct_bad_requests(
    host: Process, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    """Counted from the bridge's answers, not the table's rows: rows sending the same request
    count once, and a request counts only when the bridge refused it with a 4xx problem."""
    graph, _ = emulators
    distinct = dict.fromkeys(
        (method, tuple(sorted(h.items())), body) for _, method, h, body, *_ in CASES
    )
    refused = []
    for method, headers, body in distinct:
        response = requests.request(
            method, host.url + INGEST, headers=dict(headers), data=body, timeout=30
        )
        problem = response.headers.get("Content-Type", "").startswith("application/problem+json")
        if 400 <= response.status_code < 500 and problem:
            refused.append((method, response.status_code, response.json()["type"]))
    assert len(refused) >= 30, refused
    assert graph.requests() == []
    assert storage.row(SCRIPT, DEVICE) is None


def test_declared_oversize_is_refused_by_content_length_alone() -> None:
    """The platform buffers the body; the bridge still refuses on the declared length first."""
    from shared.api import ingest
    from shared.runtime import Bridge
    from shared.settings import Settings

    settings = Settings(
        BRIDGE_MAX_BODY_BYTES=1024,
        BRIDGE_DELIVERY_MODE="sync",
        AzureWebJobsStorage=UNREACHABLE_STORAGE,
    )
    bridge = Bridge(settings=settings, graph=None)  # type: ignore[arg-type]  # never reached
    headers = {"Content-Type": "application/json", "Content-Length": "1025"}
    response = ingest("POST", headers, b"{}", bridge=bridge)
    assert response.status == 413
    assert response.content_type == "application/problem+json"
    bad_length = ingest("POST", {**headers, "Content-Length": "-1"}, b"{}", bridge=bridge)
    assert bad_length.status == 400


def test_validation_errors_name_every_failing_field_without_echoing_input(
    host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    secret_looking = "../../" + "s3cr3t-value"
    body = report_body(deviceId=secret_looking, execution=execution(exitCode="x"))
    response = requests.post(host.url + INGEST, json=body, timeout=30)
    assert response.status_code == 422
    fields = {error["field"] for error in response.json()["errors"]}
    assert fields == {"deviceId", "execution.exitCode"}
    assert "s3cr3t" not in response.text
