"""The Graph beta emulator behaves like Graph where the bridge touches it."""

from __future__ import annotations

import email.utils
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from devstack import graph, tokens
from devstack.serving import start_in_thread

# These test the local stack itself, not the bridge (`pytest -m "not devstack"`).
pytestmark = pytest.mark.devstack

AUDIENCE = "https://graph.microsoft.com"
APP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
WRITE_ROLE = "DeviceManagementConfiguration.ReadWrite.All"
SCRIPT = "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"
DEVICE = "0d1e2f3a-4b5c-4d6e-8f7a-8b9c0d1e2f3a"
RUN_STATE = f"{SCRIPT}:{DEVICE}"
STATE_PATH = f"/beta/deviceManagement/deviceComplianceScripts/{SCRIPT}/deviceRunStates/{RUN_STATE}"
GOOD_BODY: dict[str, Any] = {
    "@odata.type": "#microsoft.graph.deviceComplianceScriptDeviceState",
    "detectionState": "success",
    "lastStateUpdateDateTime": "2026-11-28T10:00:02Z",
    "expectedStateUpdateDateTime": "2026-11-28T18:00:02Z",
    "lastSyncDateTime": "2026-11-28T10:00:05.1234567+01:00",
    "scriptOutput": '{"BitLocker":"On"}',
    "scriptError": None,
}


def token(
    roles: list[str] | None = None, audience: str = AUDIENCE, lifetime: int = 3600, **kw: Any
) -> str:
    value, _ = tokens.issue(audience, APP, [WRITE_ROLE] if roles is None else roles, lifetime, **kw)
    return value


def auth(value: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {value or token()}"}


class Graph:
    """A running emulator plus small request helpers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def patch(self, body: Any = None, path: str = STATE_PATH, **kw: Any) -> requests.Response:
        headers = {**auth(), **kw.pop("headers", {})}
        payload = GOOD_BODY if body is None else body
        return self.session.patch(self.url + path, json=payload, headers=headers, timeout=5, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        headers = {**auth(), **kw.pop("headers", {})}
        return self.session.get(self.url + path, headers=headers, timeout=5, **kw)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        response = requests.request(method, f"{self.url}/_emulator/{path}", json=body, timeout=5)
        response.raise_for_status()
        return response.json()

    def batch(self, items: list[dict[str, Any]]) -> requests.Response:
        return self.session.post(
            f"{self.url}/beta/$batch", json={"requests": items}, headers=auth(), timeout=5
        )


@pytest.fixture
def make_graph() -> Iterator[Any]:
    stops: list[Any] = []

    def start(**overrides: Any) -> Graph:
        overrides.setdefault("scripts", [])
        overrides.setdefault("write_limit", "0")
        overrides.setdefault("faults", [])
        url, stop = start_in_thread(graph.build_server(**overrides))
        stops.append(stop)
        return Graph(url)

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def g(make_graph: Any) -> Graph:
    return make_graph()


def error_of(response: requests.Response, status: int) -> dict[str, Any]:
    """Assert Graph's error shape and status; return the error object."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}
    assert error["innerError"]["request-id"] == response.headers["request-id"]
    return error


# ---- authentication and authorization -----------------------------------------------------


def test_missing_token_is_401(g: Graph) -> None:
    response = requests.patch(g.url + STATE_PATH, json=GOOD_BODY, timeout=5)
    error = error_of(response, 401)
    assert error["code"] == "InvalidAuthenticationToken"
    assert "empty" in error["message"]


@pytest.mark.parametrize(
    ("bearer", "words"),
    [
        ("not-a-jwt", "malformed"),
        (token()[:-3] + "AAA", "signature"),
        (token(audience="https://graph.microsoft.us"), "audience"),
        (token(now=time.time() - 7200), "expired"),
        (token(now=time.time() + 600), "not yet valid"),
    ],
    ids=["malformed", "bad-signature", "wrong-audience", "expired", "not-yet-valid"],
)
def test_bad_tokens_are_401_naming_the_problem(g: Graph, bearer: str, words: str) -> None:
    error = error_of(g.patch(headers=auth(bearer)), 401)
    assert error["code"] == "InvalidAuthenticationToken"
    assert words in error["message"]


def test_expired_token_message_matches_graph(g: Graph) -> None:
    error = error_of(g.patch(headers=auth(token(now=time.time() - 7200))), 401)
    assert error["message"] == "Lifetime validation failed, the token is expired."


def test_token_without_write_role_is_403(g: Graph) -> None:
    bearer = token(roles=["DeviceManagementConfiguration.Read.All"])
    error = error_of(g.patch(headers=auth(bearer)), 403)
    assert error["code"] == "Forbidden"
    assert "DeviceManagementConfiguration.ReadWrite.All" in error["message"]
    assert g.get(STATE_PATH, headers=auth(bearer)).status_code == 404  # reads are allowed


def test_managed_devices_role_may_write(g: Graph) -> None:
    bearer = token(roles=["DeviceManagementManagedDevices.ReadWrite.All"])
    assert g.patch(headers=auth(bearer)).status_code == 200


# ---- the PATCH body ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"id": RUN_STATE}, "read-only"),
        ({"detectionState": "Success"}, '"Success"'),
        ({"detectionState": "unknownFutureValue"}, "unknownFutureValue"),
        ({"@odata.type": "#microsoft.graph.deviceHealthScriptDeviceState"}, "@odata.type"),
        ({"lastStateUpdateDateTime": "2026-11-28T10:00:02"}, "lastStateUpdateDateTime"),
        ({"lastSyncDateTime": "2026-11-28 10:00:02Z"}, "lastSyncDateTime"),
        ({"expectedStateUpdateDateTime": None}, "expectedStateUpdateDateTime"),
        ({"scriptOutput": 42}, "scriptOutput"),
        ({"exitCode": 0}, "Invalid property 'exitCode'"),
    ],
    ids=[
        "id",
        "enum-case",
        "enum-unknown-future",
        "odata-type",
        "naive-timestamp",
        "space-timestamp",
        "null-timestamp",
        "output-type",
        "unknown-property",
    ],
)
def test_invalid_patch_bodies_are_400(g: Graph, change: dict[str, Any], words: str) -> None:
    error = error_of(g.patch({**GOOD_BODY, **change}), 400)
    assert error["code"] == "BadRequest"
    assert words in error["message"]
    assert g.admin("GET", "states")["states"] == []


@pytest.mark.parametrize("body", [[GOOD_BODY], "text", None], ids=["array", "string", "null"])
def test_patch_body_must_be_a_json_object(g: Graph, body: Any) -> None:
    response = g.session.patch(g.url + STATE_PATH, data=json.dumps(body), headers=auth(), timeout=5)
    assert error_of(response, 400)["code"] == "BadRequest"


def test_script_id_must_be_a_guid(g: Graph) -> None:
    path = STATE_PATH.replace(SCRIPT, "not-a-guid")
    assert error_of(g.patch(path=path), 400)["code"] == "BadRequest"


def test_run_state_id_with_encoded_slash_is_400(g: Graph) -> None:
    path = STATE_PATH.replace(RUN_STATE, "a%2Fb")
    assert error_of(g.patch(path=path), 400)["code"] == "BadRequest"


def test_unknown_script_is_404_when_a_script_list_is_configured(make_graph: Any) -> None:
    g = make_graph(scripts=[str(uuid.uuid4())])
    assert error_of(g.patch(), 404)["code"] == "ResourceNotFound"
    script = f"/beta/deviceManagement/deviceComplianceScripts/{SCRIPT}"
    assert error_of(g.get(script), 404)["code"] == "ResourceNotFound"


def test_unknown_route_is_400_and_wrong_method_is_405(g: Graph) -> None:
    error = error_of(g.get("/beta/deviceManagement/deviceHealthScripts"), 400)
    assert error["message"] == "Resource not found for the segment 'deviceHealthScripts'."
    response = g.session.delete(g.url + STATE_PATH, headers=auth(), timeout=5)
    assert error_of(response, 405)["code"] == "MethodNotAllowed"


# ---- success, read-back and the request log ------------------------------------------------


def test_good_patch_is_stored_and_read_back(g: Graph) -> None:
    response = g.patch(headers={"client-request-id": "c-1"})

    assert response.status_code == 200
    entity = response.json()
    assert entity["id"] == RUN_STATE
    assert entity["detectionState"] == "success"
    assert entity["lastSyncDateTime"] == GOOD_BODY["lastSyncDateTime"]
    assert "@odata.type" not in entity and "@odata.context" in entity
    assert response.headers["client-request-id"] == "c-1"
    assert uuid.UUID(response.headers["request-id"])
    assert json.loads(response.headers["x-ms-ags-diagnostic"])
    assert response.headers["Date"]

    assert g.get(STATE_PATH).json()["scriptOutput"] == GOOD_BODY["scriptOutput"]
    [row] = g.admin("GET", "states")["states"]
    assert (row["scriptId"], row["runStateId"]) == (SCRIPT, RUN_STATE)
    assert g.admin("GET", f"states/{SCRIPT}/{RUN_STATE}")["detectionState"] == "success"


def test_patch_merges_into_the_stored_state(g: Graph) -> None:
    g.patch()
    entity = g.patch({"detectionState": "fail"}).json()
    assert entity["detectionState"] == "fail"
    assert entity["scriptOutput"] == GOOD_BODY["scriptOutput"]


def test_script_and_run_state_list_reads(g: Graph) -> None:
    g.patch()
    script = f"/beta/deviceManagement/deviceComplianceScripts/{SCRIPT}"
    assert g.get(script).json()["id"] == SCRIPT
    params = {"$filter": f"managedDevice/id eq '{DEVICE}'"}
    [row] = g.get(f"{script}/deviceRunStates", params=params).json()["value"]
    assert row["id"] == RUN_STATE
    other = {"$filter": f"managedDevice/id eq '{uuid.uuid4()}'"}
    assert g.get(f"{script}/deviceRunStates", params=other).json()["value"] == []


def test_request_log_records_applied_and_refused_requests(g: Graph) -> None:
    g.patch(headers={"client-request-id": "good"})
    g.patch({"id": "x"}, headers={"client-request-id": "bad"})
    requests.patch(g.url + STATE_PATH, json=GOOD_BODY, timeout=5)

    log = g.admin("GET", "requests")["requests"]
    assert [(e["seq"], e["status"], e["applied"]) for e in log] == [
        (1, 200, True),
        (2, 400, False),
        (3, 401, False),
    ]
    assert log[0]["method"] == "PATCH"
    assert log[0]["path"] == STATE_PATH
    assert log[0]["client_request_id"] == "good"
    assert log[0]["body"] == GOOD_BODY
    assert uuid.UUID(log[1]["request_id"])


def test_reset_clears_states_log_and_faults(g: Graph) -> None:
    g.admin("POST", "faults", [{"status": 503}])
    g.patch()
    g.admin("POST", "reset")
    assert g.admin("GET", "states")["states"] == []
    assert g.admin("GET", "requests")["requests"] == []
    assert g.patch().status_code == 200


# ---- throttling ----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["int", "fraction", "date"])
def test_write_throttle_answers_429_with_retry_after(make_graph: Any, style: str) -> None:
    g = make_graph(write_limit="2/5", retry_after_format=style)
    assert [g.patch().status_code for _ in range(2)] == [200, 200]

    response = g.patch({"detectionState": "fail"})

    assert error_of(response, 429)["code"] == "TooManyRequests"
    value = response.headers["Retry-After"]
    if style == "int":
        assert value in {"4", "5"}
    elif style == "fraction":
        assert 4.0 < float(value) <= 5.0 and "." in value
    else:
        assert email.utils.parsedate_to_datetime(value).timestamp() > time.time() + 3
    assert g.get(STATE_PATH).json()["detectionState"] == "success"  # not applied
    assert g.get(STATE_PATH).status_code == 200  # reads are not write-throttled


def test_write_throttle_frees_a_slot_after_the_window(make_graph: Any) -> None:
    g = make_graph(write_limit="1/0.3")
    assert g.patch().status_code == 200
    assert g.patch().status_code == 429
    time.sleep(0.35)
    assert g.patch().status_code == 200


def test_write_throttle_is_counted_per_app(make_graph: Any) -> None:
    g = make_graph(write_limit="1/20")
    assert g.patch().status_code == 200
    other, _ = tokens.issue(AUDIENCE, "another-app", [WRITE_ROLE], 3600)
    assert g.patch(headers=auth(other)).status_code == 200
    assert g.patch().status_code == 429


def test_write_limit_can_be_set_at_runtime(g: Graph) -> None:
    g.admin("POST", "config", {"writeLimit": "1/20", "retryAfterFormat": "fraction"})
    g.patch()
    assert "." in g.patch().headers["Retry-After"]


# ---- fault injection -----------------------------------------------------------------------


def test_fault_with_count_applies_that_many_times(g: Graph) -> None:
    g.admin("POST", "faults", [{"status": 503, "count": 2, "retryAfter": "2.128"}])

    first, second, third = g.patch(), g.patch(), g.patch()

    assert error_of(first, 503)["code"] == "ServiceUnavailable"
    assert first.headers["Retry-After"] == "2.128"
    assert second.status_code == 503
    assert third.status_code == 200
    assert [e["applied"] for e in g.admin("GET", "requests")["requests"]] == [False, False, True]


def test_route_template_fault_reproduces_the_live_refusal(g: Graph) -> None:
    message = "No OData route exists that match template ~/singleton/navigation/key/navigation/key"
    rule = {"status": 400, "code": "No method match route template", "message": message}
    g.admin("POST", "faults", [rule])
    error = error_of(g.patch(), 400)
    assert error["code"] == "No method match route template"
    assert g.admin("GET", "states")["states"] == []


def test_faults_default_to_writes_and_respect_match(g: Graph) -> None:
    g.admin("POST", "faults", [{"status": 500, "match": "not-this-path"}, {"status": 502}])
    assert g.get(STATE_PATH).status_code == 404  # reads pass
    assert error_of(g.patch(), 502)["code"] == "BadGateway"


def test_fault_probability_zero_never_applies(g: Graph) -> None:
    g.admin("POST", "faults", [{"status": 500, "probability": 0}])
    assert g.patch().status_code == 200


def test_delay_fault_slows_then_handles_normally(g: Graph) -> None:
    g.admin("POST", "faults", [{"delay": 0.3, "count": 1}])
    started = time.monotonic()
    assert g.patch().status_code == 200
    assert time.monotonic() - started >= 0.3


def test_drop_fault_closes_the_connection_without_a_response(g: Graph) -> None:
    g.admin("POST", "faults", [{"drop": True, "count": 1}])
    with pytest.raises(requests.ConnectionError):
        g.patch()
    assert g.patch().status_code == 200
    assert g.admin("GET", "requests")["requests"][0]["dropped"] is True


def test_faults_from_the_environment(make_graph: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPH_EMULATOR_FAULTS", json.dumps([{"status": 504, "count": 1}]))
    g = make_graph(faults=None)
    assert g.patch().status_code == 504
    assert g.patch().status_code == 200


def test_empty_fault_list_clears_rules(g: Graph) -> None:
    g.admin("POST", "faults", [{"status": 500}])
    g.admin("POST", "faults", [])
    assert g.patch().status_code == 200


# ---- $batch --------------------------------------------------------------------------------


def item(
    item_id: str, body: Any = None, run_state: str = RUN_STATE, **extra: Any
) -> dict[str, Any]:
    url = f"/deviceManagement/deviceComplianceScripts/{SCRIPT}/deviceRunStates/{run_state}"
    return {
        "id": item_id,
        "method": "PATCH",
        "url": url,
        "headers": {"Content-Type": "application/json"},
        "body": GOOD_BODY if body is None else body,
        **extra,
    }


def test_batch_runs_each_item_and_reports_each_result(g: Graph) -> None:
    response = g.batch(
        [
            item("1"),
            item("2", {"detectionState": "Fail"}, run_state="other"),
            item("3", run_state="other", dependsOn=["2"]),
        ]
    )

    assert response.status_code == 200
    results = {r["id"]: r for r in response.json()["responses"]}
    assert results["1"]["status"] == 200
    assert results["1"]["body"]["id"] == RUN_STATE
    assert results["2"]["status"] == 400
    assert results["2"]["body"]["error"]["code"] == "BadRequest"
    assert results["3"]["status"] == 424
    assert [s["runStateId"] for s in g.admin("GET", "states")["states"]] == [RUN_STATE]
    log = g.admin("GET", "requests")["requests"]
    assert [e["batch_item_id"] for e in log] == ["1", "2", "3", None]


def test_batch_over_20_requests_is_400(g: Graph) -> None:
    response = g.batch([item(str(n), run_state=f"rs{n}") for n in range(21)])
    assert error_of(response, 400)["code"] == "BadRequest"
    assert g.admin("GET", "states")["states"] == []


def test_batch_items_are_throttled_and_faulted_one_by_one(make_graph: Any) -> None:
    g = make_graph(write_limit="2/20")
    g.admin("POST", "faults", [{"status": 503, "count": 1, "match": "rs0"}])

    response = g.batch([item(str(n), run_state=f"rs{n}") for n in range(4)])

    statuses = [r["status"] for r in response.json()["responses"]]
    assert statuses == [503, 200, 200, 429]
    assert "Retry-After" in response.json()["responses"][3]["headers"]


def test_batch_requires_a_valid_token_once(g: Graph) -> None:
    response = requests.post(f"{g.url}/beta/$batch", json={"requests": [item("1")]}, timeout=5)
    assert error_of(response, 401)["code"] == "InvalidAuthenticationToken"
    assert g.admin("GET", "states")["states"] == []


# ---- deviceRunStates lookup and opaque run-state ids -----------------------------------------

SCRIPT_PATH = f"/beta/deviceManagement/deviceComplianceScripts/{SCRIPT}"
BY_DEVICE = {"$filter": f"managedDevice/id eq '{DEVICE}'", "$select": "id"}


def test_run_state_list_filters_by_device_and_selects_id(g: Graph) -> None:
    g.patch()
    response = g.get(f"{SCRIPT_PATH}/deviceRunStates", params=BY_DEVICE)
    assert response.json()["value"] == [{"id": RUN_STATE}]
    assert response.json()["@odata.context"].endswith("/deviceRunStates(id)")
    bad = {**BY_DEVICE, "$select": "id,exitCode"}
    error = error_of(g.get(f"{SCRIPT_PATH}/deviceRunStates", params=bad), 400)
    assert "exitCode" in error["message"]


def test_opaque_run_state_ids_are_found_by_lookup_and_the_template_id_is_unknown(
    make_graph: Any,
) -> None:
    g = make_graph(run_state_ids="opaque", auto_devices=True)

    assert error_of(g.patch(), 404)["code"] == "ResourceNotFound"
    [found] = g.get(f"{SCRIPT_PATH}/deviceRunStates", params=BY_DEVICE).json()["value"]
    run_state = found["id"]
    assert uuid.UUID(run_state) and run_state != RUN_STATE
    [again] = g.get(f"{SCRIPT_PATH}/deviceRunStates", params=BY_DEVICE).json()["value"]
    assert again == found  # one id per (script, device), stable

    path = STATE_PATH.replace(RUN_STATE, run_state)
    assert g.get(path).json()["detectionState"] == "unknown"  # listed before any write
    entity = g.patch(path=path).json()

    assert entity["id"] == run_state
    [state] = g.admin("GET", "states")["states"]
    assert (state["runStateId"], state["managedDeviceId"]) == (run_state, DEVICE)
    assert state["detectionState"] == "success"
    assert g.admin("GET", "runstates")["runStates"] == [
        {"scriptId": SCRIPT, "managedDeviceId": DEVICE, "runStateId": run_state}
    ]
    other_script = SCRIPT_PATH.replace(SCRIPT, str(uuid.uuid4()))
    [other] = g.get(f"{other_script}/deviceRunStates", params=BY_DEVICE).json()["value"]
    assert other["id"] != run_state


def test_opaque_lookup_finds_only_devices_intune_knows(make_graph: Any) -> None:
    g = make_graph(run_state_ids="opaque")
    assert g.get(f"{SCRIPT_PATH}/deviceRunStates", params=BY_DEVICE).json()["value"] == []
    g.admin("POST", "devices", {"managedDeviceId": DEVICE})
    assert len(g.get(f"{SCRIPT_PATH}/deviceRunStates", params=BY_DEVICE).json()["value"]) == 1

    g.admin("POST", "config", {"autoRegisterDevices": True, "unknownDevices": [DEVICE]})
    assert g.get(f"{SCRIPT_PATH}/deviceRunStates", params=BY_DEVICE).json()["value"] == []


def test_run_state_id_mode_can_be_switched_at_runtime(g: Graph) -> None:
    assert g.admin("POST", "config", {"runStateIds": "opaque"})["runStateIds"] == "opaque"
    assert g.patch().status_code == 404
    g.admin("POST", "config", {"runStateIds": "template"})
    assert g.patch().status_code == 200
    response = requests.post(f"{g.url}/_emulator/config", json={"runStateIds": "x"}, timeout=5)
    assert response.status_code == 400


# ---- managedDevices and Entra device objects (the entra destination) -----------------------

AAD_DEVICE = "5a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
OBJECT_ID = "c0ffee00-1111-4222-8333-444455556666"
DEVICE_WRITE = "Device.ReadWrite.All"
READER = auth(token(["Device.Read.All"]))


def register(g: Graph, **extra: Any) -> dict[str, Any]:
    spec = {"managedDeviceId": DEVICE, "azureADDeviceId": AAD_DEVICE, "objectId": OBJECT_ID}
    [device] = g.admin("POST", "devices", {**spec, **extra})["devices"]
    return device


def entra(value: str | None = "fail", name: str = "extensionAttribute3") -> dict[str, Any]:
    return {"extensionAttributes": {name: value}}


def patch_device(g: Graph, body: Any, roles: list[str] | None = None, **kw: Any) -> Any:
    path = kw.pop("path", f"/v1.0/devices/{OBJECT_ID}")
    return g.patch(body, path=path, headers=auth(token([DEVICE_WRITE] if roles is None else roles)))


@pytest.mark.parametrize("version", ["beta", "v1.0"])
def test_managed_device_select_returns_the_entra_device_id(g: Graph, version: str) -> None:
    register(g)
    path = f"/{version}/deviceManagement/managedDevices/{DEVICE}"
    body = g.get(path, params={"$select": "azureADDeviceId"}).json()
    assert {k: v for k, v in body.items() if not k.startswith("@")} == {
        "azureADDeviceId": AAD_DEVICE
    }
    assert body["@odata.context"].endswith("managedDevices(azureADDeviceId)/$entity")
    assert error_of(g.get(path, params={"$select": "nope"}), 400)["code"] == "BadRequest"


def test_unknown_managed_device_is_404_and_a_malformed_id_400(g: Graph) -> None:
    path = f"/beta/deviceManagement/managedDevices/{DEVICE}"
    assert error_of(g.get(path), 404)["code"] == "ResourceNotFound"
    bad = error_of(g.get("/beta/deviceManagement/managedDevices/not-a-guid"), 400)
    assert bad["code"] == "BadRequest"


def test_auto_registration_makes_any_device_known_except_the_declared_unknown(
    make_graph: Any,
) -> None:
    unknown = str(uuid.uuid4())
    g = make_graph(auto_devices=True, unknown_devices=[unknown])
    path = "/beta/deviceManagement/managedDevices/{}"
    aad = g.get(path.format(DEVICE), params={"$select": "azureADDeviceId"}).json()
    [device] = g.admin("GET", "devices")["devices"]
    assert device["managedDeviceId"] == DEVICE
    assert aad["azureADDeviceId"] == device["azureADDeviceId"] != DEVICE
    assert device["objectId"] and device["extensionAttributes"]["extensionAttribute1"] is None
    assert g.get(path.format(unknown)).status_code == 404
    assert len(g.admin("GET", "devices")["devices"]) == 1


def test_devices_filter_by_device_id_returns_the_object_id(g: Graph) -> None:
    register(g)
    params = {"$filter": f"deviceId eq '{AAD_DEVICE}'", "$select": "id"}
    body = g.get("/v1.0/devices", params=params, headers=READER).json()
    assert body["value"] == [{"id": OBJECT_ID}]
    assert body["@odata.context"] == "https://graph.microsoft.com/v1.0/$metadata#devices(id)"
    other = {**params, "$filter": f"deviceId eq '{uuid.uuid4()}'"}
    assert g.get("/v1.0/devices", params=other, headers=READER).json()["value"] == []
    unsupported = {"$filter": "displayName eq 'x'"}
    error = error_of(g.get("/v1.0/devices", params=unsupported, headers=READER), 400)
    assert error["code"] == "Request_UnsupportedQuery"


def test_a_managed_device_without_an_entra_object_has_no_device_to_find(g: Graph) -> None:
    register(g, objectId=None)
    params = {"$filter": f"deviceId eq '{AAD_DEVICE}'", "$select": "id"}
    assert g.get("/v1.0/devices", params=params, headers=READER).json()["value"] == []
    unregistered = g.admin(
        "POST", "devices", {"managedDeviceId": str(uuid.uuid4()), "azureADDeviceId": None}
    )["devices"][0]
    assert unregistered["objectId"]  # ids left out are generated...
    none = "00000000-0000-0000-0000-000000000000"
    [zero] = g.admin(
        "POST", "devices", {"managedDeviceId": str(uuid.uuid4()), "azureADDeviceId": none}
    )["devices"]
    assert zero["objectId"] is None  # ...but Intune's all-zero id means no Entra device


def test_extension_attributes_patch_is_204_and_reads_back(g: Graph) -> None:
    register(g)
    response = patch_device(g, entra("fail"))
    assert response.status_code == 204
    assert response.content == b""
    patch_device(g, entra("compliant", "extensionAttribute15"))
    patch_device(g, entra(None))

    device = g.admin("GET", f"devices/{DEVICE}")
    assert device["extensionAttributes"]["extensionAttribute3"] is None
    assert device["extensionAttributes"]["extensionAttribute15"] == "compliant"
    assert g.admin("GET", f"devices/{OBJECT_ID}") == device
    read = g.get(f"/v1.0/devices/{OBJECT_ID}", headers=auth(token([DEVICE_WRITE])))
    assert read.json()["extensionAttributes"]["extensionAttribute15"] == "compliant"
    [entry] = [e for e in g.admin("GET", "requests")["requests"] if e["status"] == 204][:1]
    assert entry["path"] == f"/v1.0/devices/{OBJECT_ID}" and entry["applied"] is True


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"displayName": "renamed"}, 403, "Authorization_RequestDenied"),
        ({**entra(), "accountEnabled": False}, 403, "Authorization_RequestDenied"),
        ({"id": OBJECT_ID}, 400, "Request_BadRequest"),
        ({"favouriteColour": "blue"}, 400, "Request_BadRequest"),
        (entra(name="extensionAttribute16"), 400, "Request_BadRequest"),
        (entra("x" * 1025), 400, "Request_BadRequest"),
        (entra(42), 400, "Request_BadRequest"),  # type: ignore[arg-type]
        ({"extensionAttributes": "fail"}, 400, "Request_BadRequest"),
        ({}, 400, "Request_BadRequest"),
        ([entra()], 400, "Request_BadRequest"),
    ],
    ids=[
        "display-name",
        "account-enabled",
        "id",
        "unknown-property",
        "attribute-16",
        "too-long",
        "not-a-string",
        "not-an-object",
        "empty",
        "array",
    ],
)
def test_only_extension_attributes_may_be_patched(
    g: Graph, body: Any, status: int, code: str
) -> None:
    register(g)
    assert error_of(patch_device(g, body), status)["code"] == code
    assert set(g.admin("GET", f"devices/{DEVICE}")["extensionAttributes"].values()) == {None}


def test_an_attribute_of_1024_characters_is_allowed(g: Graph) -> None:
    register(g)
    assert patch_device(g, entra("x" * 1024)).status_code == 204


@pytest.mark.parametrize(
    ("roles", "read", "write"),
    [
        ([WRITE_ROLE], 403, 403),
        (["Device.Read.All"], 200, 403),
        ([DEVICE_WRITE], 200, 204),
        (["Directory.ReadWrite.All"], 200, 204),
    ],
)
def test_device_objects_need_device_or_directory_roles(
    g: Graph, roles: list[str], read: int, write: int
) -> None:
    register(g)
    listed = g.get("/v1.0/devices", headers=auth(token(roles)))
    assert listed.status_code == read
    response = patch_device(g, entra(), roles=roles)
    assert response.status_code == write
    if write == 403:
        error = error_of(response, 403)
        assert error["code"] == "Authorization_RequestDenied"
        assert error["message"] == "Insufficient privileges to complete the operation."


def test_unknown_device_object_is_404_and_a_malformed_one_400(g: Graph) -> None:
    assert error_of(patch_device(g, entra()), 404)["code"] == "Request_ResourceNotFound"
    bad = error_of(patch_device(g, entra(), path="/v1.0/devices/nope"), 400)
    assert bad["code"] == "Request_BadRequest"


def test_device_writes_share_the_write_throttle_and_the_fault_rules(make_graph: Any) -> None:
    g = make_graph(write_limit="1/20")
    register(g)
    both = [WRITE_ROLE, DEVICE_WRITE]
    assert g.patch(headers=auth(token(both))).status_code == 200
    throttled = patch_device(g, entra(), roles=both)
    assert error_of(throttled, 429)["code"] == "TooManyRequests"
    assert throttled.headers["Retry-After"]

    g.admin("POST", "config", {"writeLimit": "0"})
    g.admin("POST", "faults", [{"status": 503, "count": 1, "match": "/v1.0/devices/"}])
    assert patch_device(g, entra()).status_code == 503
    assert patch_device(g, entra()).status_code == 204


def test_the_request_log_lets_a_test_count_lookups(g: Graph) -> None:
    register(g)
    managed = f"/beta/deviceManagement/managedDevices/{DEVICE}"
    for _ in range(2):
        g.get(managed, params={"$select": "azureADDeviceId"})
    g.get("/v1.0/devices", params={"$filter": f"deviceId eq '{AAD_DEVICE}'"}, headers=READER)
    log = g.admin("GET", "requests")["requests"]
    assert [e["path"] for e in log].count(managed) == 2
    assert log[0]["query"] == {"$select": "azureADDeviceId"}
    assert log[2]["query"]["$filter"] == f"deviceId eq '{AAD_DEVICE}'"


def test_compliance_scripts_exist_in_beta_only(g: Graph) -> None:
    path = STATE_PATH.replace("/beta/", "/v1.0/")
    error = error_of(g.patch(path=path), 400)
    assert error["message"] == "Resource not found for the segment 'deviceComplianceScripts'."


def test_reset_forgets_devices_and_opaque_ids(make_graph: Any) -> None:
    g = make_graph(run_state_ids="opaque", auto_devices=True)
    g.get(f"{SCRIPT_PATH}/deviceRunStates", params=BY_DEVICE)
    g.admin("POST", "config", {"autoRegisterDevices": False})
    g.admin("POST", "reset")
    assert g.admin("GET", "devices")["devices"] == []
    assert g.admin("GET", "runstates")["runStates"] == []
    assert g.admin("GET", "config")["autoRegisterDevices"] is True


def test_device_settings_from_the_environment(
    make_graph: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    unknown = str(uuid.uuid4())
    monkeypatch.setenv("GRAPH_EMULATOR_AUTO_DEVICES", "1")
    monkeypatch.setenv("GRAPH_EMULATOR_UNKNOWN_DEVICES", unknown)
    monkeypatch.setenv("GRAPH_EMULATOR_RUN_STATE_IDS", "opaque")
    g = make_graph()
    assert g.admin("GET", "config") | {"audience": None} == {
        "audience": None,
        "scripts": [],
        "writeLimit": None,
        "retryAfterFormat": "int",
        "runStateIds": "opaque",
        "autoRegisterDevices": True,
        "unknownDevices": [unknown],
    }


@pytest.mark.parametrize(
    "body",
    [
        {"managedDeviceId": "not-a-guid"},
        {"managedDeviceId": DEVICE, "colour": "red"},
        {"managedDeviceId": DEVICE, "objectId": "x"},
        "text",
    ],
)
def test_bad_device_registrations_are_refused(g: Graph, body: Any) -> None:
    response = requests.post(f"{g.url}/_emulator/devices", json=body, timeout=5)
    assert response.status_code == 400


# ---- running as a process ------------------------------------------------------------------


def test_runs_as_a_process_and_stops_cleanly_on_sigterm() -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "devstack.graph", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        ready = json.loads(child.stdout.readline())
        assert ready == {"ready": "graph", "url": ready["url"]}
        assert ready["url"].startswith("http://127.0.0.1:")
        assert requests.get(f"{ready['url']}/_emulator/states", timeout=5).json() == {"states": []}
    finally:
        child.terminate()
    assert child.wait(timeout=10) == 0
