"""The Logs Ingestion emulator holds the real azure-monitor-ingestion client to the service."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.identity import ManagedIdentityCredential
from azure.monitor.ingestion import LogsIngestionClient, LogsUploadError

from devstack import identity, logs, tokens
from devstack.serving import start_in_thread
from tests.stack import LogsEmulator

# These test the local stack itself, not the bridge (`pytest -m "not devstack"`).
pytestmark = pytest.mark.devstack

HEADER = "logs-test-identity-header"
CLIENT_ID = "22222222-3333-4444-5555-666666666666"
RULE = logs.DEFAULT_RULE_ID
STREAM = logs.DEFAULT_STREAM
PATH = f"/dataCollectionRules/{RULE}/streams/{STREAM}"
MIB = 1024 * 1024


def row(n: int = 0, **overrides: Any) -> dict[str, Any]:
    """One row as the bridge's `logs` destination writes it."""
    value: dict[str, Any] = {
        "TimeGenerated": "2026-11-28T10:00:05.123456Z",
        "ReportId": f"report-{n:05d}",
        "ScriptId": "3c9e7a1d-5b2f-4e8c-a6d4-1f0b9e8c7a25",
        "DeviceId": "6f1b4c2e-8d3a-4b7e-9c1f-2a5d8e9b0c11",
        "DetectionState": "success",
        "LastStateUpdateDateTime": "2026-11-28T10:00:02Z",
        "ExpectedStateUpdateDateTime": "2026-11-28T18:00:02Z",
        "LastSyncDateTime": "2026-11-28T10:00:05Z",
        "ScriptOutput": '{"BitLocker":"On"}',
        "ScriptError": None,
        "AgentVersion": "1.4.0",
    }
    value.update(overrides)
    return value


@pytest.fixture
def make_logs() -> Iterator[Any]:
    stops: list[Any] = []

    def start(**overrides: Any) -> LogsEmulator:
        overrides.setdefault("faults", [])
        overrides.setdefault("request_limit", "0")
        url, stop = start_in_thread(logs.build_server(**overrides))
        stops.append(stop)
        return LogsEmulator(url)

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def emu(make_logs: Any) -> LogsEmulator:
    return make_logs()


@pytest.fixture
def credential(monkeypatch: pytest.MonkeyPatch) -> Iterator[ManagedIdentityCredential]:
    """azure-identity's real managed identity credential, served by the identity emulator."""
    url, stop = start_in_thread(identity.build_server(header=HEADER))
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{url}{identity.TOKEN_PATH}")
    monkeypatch.setenv("IDENTITY_HEADER", HEADER)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    monkeypatch.delenv("MSI_ENDPOINT", raising=False)
    yield ManagedIdentityCredential(client_id=CLIENT_ID)
    stop()


def client(emu: LogsEmulator, credential: ManagedIdentityCredential, **kw: Any) -> Any:
    # A short backoff keeps retried tests quick; Retry-After, when sent, still rules.
    return LogsIngestionClient(emu.url, credential, retry_backoff_factor=0.05, **kw)


def upload(emu: LogsEmulator, credential: ManagedIdentityCredential, rows: Any, **kw: Any) -> None:
    # Over http the client sends its token only when each call says so (tooling.md).
    client(emu, credential).upload(RULE, STREAM, rows, enforce_https=False, **kw)


def bearer(audience: str = logs.DEFAULT_AUDIENCE, **kw: Any) -> dict[str, str]:
    token, _ = tokens.issue(audience, CLIENT_ID, [], 3600, **kw)
    return {"Authorization": f"Bearer {token}"}


def post(emu: LogsEmulator, body: Any, path: str = PATH, **kw: Any) -> requests.Response:
    """A hand-made call, for what the client library never sends."""
    headers = {"Content-Type": "application/json", **bearer(), **kw.pop("headers", {})}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    params = kw.pop("params", {"api-version": logs.API_VERSION})
    return requests.post(emu.url + path, data=data, headers=headers, params=params, timeout=10)


def error_of(response: requests.Response, status: int) -> dict[str, Any]:
    """Assert the service's error shape and status; return the error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"}
    assert response.headers["x-ms-error-code"] == error["code"]
    return error


# ---- the real client -----------------------------------------------------------------------


def test_real_client_sends_gzip_and_the_rows_read_back_equal(
    emu: LogsEmulator, credential: ManagedIdentityCredential
) -> None:
    sent = [row(n) for n in range(25)]

    upload(emu, credential, sent)

    [call] = emu.requests()
    assert call["status"] == 204
    assert call["contentEncoding"] == "gzip"
    assert call["path"] == PATH
    assert call["query"] == {"api-version": "2023-01-01"}
    assert call["rows"] == 25
    assert call["client_request_id"]
    assert emu.rows() == sent


def test_real_client_splits_a_large_batch_into_calls_of_at_most_1_mib(
    emu: LogsEmulator, credential: ManagedIdentityCredential
) -> None:
    # About 3.4 MB of rows: the client must split them, the service takes each call.
    sent = [row(n, ScriptOutput=f"{n:05d}" + "x" * 1100) for n in range(3000)]
    total = sum(len(json.dumps(r).encode()) for r in sent)

    upload(emu, credential, sent)

    calls = emu.requests()
    assert len(calls) >= -(-total // MIB) >= 4
    assert all(c["status"] == 204 and c["contentEncoding"] == "gzip" for c in calls)
    assert all(c["bytes"] <= MIB for c in calls)
    assert sum(c["rows"] for c in calls) == 3000
    # The client splits on the rows' summed size, so a call's JSON can pass 1 MiB by its commas:
    # the service's limit is on the wire, which is why the emulator checks that and not this.
    assert max(c["decodedBytes"] for c in calls) > MIB
    assert emu.rows() == sent


def test_a_429_with_retry_after_is_waited_out_and_retried_by_the_client(
    emu: LogsEmulator, credential: ManagedIdentityCredential
) -> None:
    emu.faults([{"status": 429, "count": 1, "retryAfter": "1"}])
    sent = [row(n) for n in range(3)]

    started = time.monotonic()
    upload(emu, credential, sent)

    assert time.monotonic() - started >= 1.0
    assert [(c["status"], c["code"]) for c in emu.requests()] == [
        (429, "TooManyRequests"),
        (204, None),
    ]
    assert emu.rows() == sent


def test_a_503_is_retried_by_the_client(
    emu: LogsEmulator, credential: ManagedIdentityCredential
) -> None:
    emu.faults([{"status": 503, "count": 2}])
    upload(emu, credential, [row()])
    assert [c["status"] for c in emu.requests()] == [503, 503, 204]
    assert len(emu.rows()) == 1


def test_a_bad_column_is_refused_and_nothing_of_that_call_is_stored(
    emu: LogsEmulator, credential: ManagedIdentityCredential
) -> None:
    with pytest.raises(HttpResponseError) as raised:
        upload(emu, credential, [row(0), row(1, Severity="high")])

    assert raised.value.status_code == 400
    assert raised.value.error is not None
    assert raised.value.error.code == "InvalidPayload"
    assert "Severity" in raised.value.error.message
    assert emu.rows() == []
    assert [c["status"] for c in emu.requests()] == [400]  # a 400 is not retried


def test_a_wrongly_typed_value_reaches_on_error_with_its_chunk(
    emu: LogsEmulator, credential: ManagedIdentityCredential
) -> None:
    failed: list[LogsUploadError] = []
    bad = [row(0, TimeGenerated="yesterday")]

    upload(emu, credential, bad, on_error=failed.append)

    [error] = failed
    assert error.failed_logs == bad
    assert "TimeGenerated" in str(error.error)


def test_over_http_the_client_sends_nothing_without_enforce_https_false(
    emu: LogsEmulator, credential: ManagedIdentityCredential
) -> None:
    with pytest.raises(ServiceRequestError):
        client(emu, credential).upload(RULE, STREAM, [row()])
    assert emu.requests() == []


def test_a_token_for_another_clouds_monitor_is_401_invalid_audience(
    emu: LogsEmulator, credential: ManagedIdentityCredential
) -> None:
    us_gov = client(emu, credential, credential_scopes=["https://monitor.azure.us/.default"])
    with pytest.raises(HttpResponseError) as raised:
        us_gov.upload(RULE, STREAM, [row()], enforce_https=False)
    assert raised.value.status_code == 401
    assert raised.value.error is not None
    assert raised.value.error.code == "InvalidAudience"

    emu.config(audience="https://monitor.azure.us")
    us_gov.upload(RULE, STREAM, [row()], enforce_https=False)
    assert len(emu.rows()) == 1


# ---- the path, the token and the body ------------------------------------------------------


def test_an_uncompressed_body_is_accepted_too(emu: LogsEmulator) -> None:
    response = post(emu, [row()], headers={"x-ms-client-request-id": "c-1"})
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["x-ms-client-request-id"] == "c-1"
    assert response.headers["x-ms-request-id"]
    assert emu.requests()[0]["contentEncoding"] is None


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"Authorization": ""}, "InvalidAuthenticationToken"),
        ({"Authorization": "Bearer not-a-jwt"}, "InvalidAuthenticationToken"),
        (bearer(now=time.time() - 7200), "InvalidAuthenticationToken"),
        (bearer("https://graph.microsoft.com"), "InvalidAudience"),
    ],
    ids=["missing", "malformed", "expired", "graph-audience"],
)
def test_bad_tokens_are_401(emu: LogsEmulator, headers: dict[str, str], code: str) -> None:
    assert error_of(post(emu, [row()], headers=headers), 401)["code"] == code
    assert emu.rows() == []


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        (PATH, {}, 400, "InvalidApiVersion"),
        (PATH, {"api-version": "2021-11-01-preview"}, 400, "InvalidApiVersion"),
        (PATH.replace(RULE, "my-rule"), None, 400, "InvalidDataCollectionRuleId"),
        (PATH.replace(RULE, "dcr-" + "0" * 32), None, 404, "NotFound"),
        (PATH.replace(STREAM, "Custom-Other_CL"), None, 400, "InvalidStream"),
        (f"/dataCollectionRules/{RULE}", None, 404, "NotFound"),
    ],
    ids=["no-api-version", "old-api-version", "malformed-rule", "unknown-rule", "stream", "route"],
)
def test_the_path_names_the_configured_rule_and_stream(
    emu: LogsEmulator, path: str, params: dict[str, str] | None, status: int, code: str
) -> None:
    kw = {} if params is None else {"params": params}
    assert error_of(post(emu, [row()], path=path, **kw), status)["code"] == code
    assert emu.rows() == []


def test_a_call_over_1_mib_on_the_wire_is_413_with_the_services_message(emu: LogsEmulator) -> None:
    body = json.dumps([row(n, ScriptOutput="y" * 60_000) for n in range(18)]).encode()
    assert len(body) > MIB
    error = error_of(post(emu, body), 413)
    assert error["code"] == "ContentLengthLimitExceeded"
    assert error["message"] == (
        f"Maximum allowed content length: 1048576 bytes (1 MB). "
        f"Provided content length: {len(body)} bytes."
    )
    # The same rows gzip far below the limit, and are taken.
    assert post(emu, gzip.compress(body), headers={"Content-Encoding": "gzip"}).status_code == 204


def test_a_body_far_over_the_limit_is_refused_before_it_is_read(emu: LogsEmulator) -> None:
    host, port = emu.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        head = f"POST {PATH}?api-version={logs.API_VERSION} HTTP/1.1\r\nHost: {host}\r\n"
        sock.sendall(f"{head}Content-Length: {64 * MIB}\r\n\r\n".encode())
        # The emulator answers and closes the connection without waiting for the body.
        answer = b"".join(iter(lambda: sock.recv(4096), b"")).decode()
    assert answer.startswith("HTTP/1.1 413 ")
    assert f"Provided content length: {64 * MIB} bytes." in answer


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"\x1f\x8bnot gzip", {"Content-Encoding": "gzip"}, 400, "InvalidContentEncoding"),
        (b"[]", {"Content-Encoding": "br"}, 400, "InvalidContentEncoding"),
        (b"{not json", {}, 400, "InvalidPayload"),
        (b'[{"ReportId": NaN}]', {}, 400, "InvalidPayload"),
        (json.dumps(row()).encode(), {}, 400, "InvalidPayload"),
        (b'["text"]', {}, 400, "InvalidPayload"),
    ],
    ids=["bad-gzip", "brotli", "not-json", "nan", "object-not-array", "item-not-object"],
)
def test_malformed_bodies_are_400(
    emu: LogsEmulator, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    assert error_of(post(emu, body, headers=headers), status)["code"] == code


def test_an_empty_body_is_500_without_a_code_and_an_empty_array_is_taken(
    emu: LogsEmulator,
) -> None:
    empty = post(emu, b"")
    assert empty.status_code == 500
    assert empty.content == b""
    assert post(emu, b"[]").status_code == 204
    assert emu.rows() == []


@pytest.mark.parametrize(
    ("column_type", "value", "ok"),
    [
        ("string", "text", True),
        ("string", 42, False),
        ("datetime", "2026-11-28T10:00:02Z", True),
        ("datetime", "2026-11-28T10:00:02.1234567+01:00", True),
        ("datetime", "2026-11-28 10:00:02", True),
        ("datetime", "2026-13-28T10:00:02Z", False),
        ("datetime", 1764324002, False),
        ("int", 2**31 - 1, True),
        ("int", 2**31, False),
        ("int", 1.5, False),
        ("int", True, False),
        ("long", 2**40, True),
        ("long", "5", False),
        ("real", 2.5, True),
        ("real", 3, True),
        ("real", "2.5", False),
        ("boolean", False, True),
        ("boolean", 0, False),
        ("dynamic", {"nested": [1, "two"]}, True),
        ("string", None, True),
        ("int", None, True),
    ],
)
def test_each_value_is_checked_against_its_columns_type(
    make_logs: Any, column_type: str, value: Any, ok: bool
) -> None:
    emu = make_logs(streams={"Custom-Typed_CL": {"Value": column_type}})
    path = f"/dataCollectionRules/{RULE}/streams/Custom-Typed_CL"
    response = post(emu, [{"Value": value}], path=path)
    if ok:
        assert response.status_code == 204, response.text
        assert emu.rows() == [{"Value": value}]
    else:
        error = error_of(response, 400)
        assert error["code"] == "InvalidPayload"
        assert f"'Value' ({column_type})" in error["message"]


def test_columns_left_out_of_a_row_are_allowed(emu: LogsEmulator) -> None:
    assert post(emu, [{"TimeGenerated": "2026-11-28T10:00:02Z"}]).status_code == 204


def test_strings_over_64_kb_are_truncated_as_the_service_does(emu: LogsEmulator) -> None:
    assert post(emu, [row(ScriptOutput="é" * 40_000)]).status_code == 204
    [stored] = emu.rows()
    assert len(stored["ScriptOutput"].encode()) == 64 * 1024
    assert emu.requests()[0]["truncatedValues"] == 1


def test_an_identity_without_the_publisher_role_is_403(emu: LogsEmulator) -> None:
    emu.config(publishers=[tokens.object_id("someone-else")])
    error = error_of(post(emu, [row()]), 403)
    assert error["code"] == "OperationFailed"
    emu.config(publishers=[tokens.object_id(CLIENT_ID)])
    assert post(emu, [row()]).status_code == 204


# ---- limits, faults, admin -----------------------------------------------------------------


def test_the_per_rule_request_limit_answers_429_with_retry_after(make_logs: Any) -> None:
    emu = make_logs(request_limit="2/60")
    assert [post(emu, [row(n)]).status_code for n in range(2)] == [204, 204]
    response = post(emu, [row(2)])
    assert error_of(response, 429)["code"] == "TooManyRequests"
    assert 59 <= int(response.headers["Retry-After"]) <= 60
    assert len(emu.rows()) == 2


@pytest.mark.parametrize(
    ("rule", "code"),
    [
        ({"status": 413}, "ContentLengthLimitExceeded"),
        ({"status": 429, "retryAfter": "2.5"}, "TooManyRequests"),
        ({"status": 503}, "ServiceUnavailable"),
    ],
)
def test_status_faults_answer_with_the_services_codes(
    emu: LogsEmulator, rule: dict[str, Any], code: str
) -> None:
    emu.faults([{**rule, "count": 1}])
    response = post(emu, [row()])
    assert error_of(response, rule["status"])["code"] == code
    assert response.headers.get("Retry-After") == rule.get("retryAfter")
    assert post(emu, [row()]).status_code == 204
    assert len(emu.rows()) == 1


def test_drop_and_delay_faults(emu: LogsEmulator) -> None:
    emu.faults([{"drop": True, "count": 1}, {"delay": 0.3, "count": 1}])
    with pytest.raises(requests.ConnectionError):
        post(emu, [row()])
    started = time.monotonic()
    assert post(emu, [row()]).status_code == 204
    assert time.monotonic() - started >= 0.3
    assert [c["dropped"] for c in emu.requests()] == [True, False]


def test_faults_and_streams_from_the_environment(
    make_logs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGS_EMULATOR_FAULTS", json.dumps([{"status": 503, "count": 1}]))
    monkeypatch.setenv("LOGS_EMULATOR_STREAMS", json.dumps({"Custom-Env_CL": {"N": "int"}}))
    monkeypatch.setenv("LOGS_EMULATOR_RULE_ID", "dcr-" + "a" * 32)
    emu = make_logs(faults=None)
    path = f"/dataCollectionRules/dcr-{'a' * 32}/streams/Custom-Env_CL"
    assert post(emu, [{"N": 1}], path=path).status_code == 503
    assert post(emu, [{"N": 1}], path=path).status_code == 204
    assert emu.settings()["BRIDGE_LOGS_STREAM"] == "Custom-Env_CL"


def test_reset_clears_rows_requests_faults_and_settings(emu: LogsEmulator) -> None:
    emu.faults([{"status": 503}])
    emu.config(audience="https://monitor.azure.cn")
    post(emu, [row()])
    emu.reset()
    assert emu.rows() == [] and emu.requests() == []
    assert post(emu, [row()]).status_code == 204


def test_rows_can_be_read_back_per_stream(make_logs: Any) -> None:
    emu = make_logs(streams={STREAM: logs.DEFAULT_COLUMNS, "Custom-Other_CL": {"N": "long"}})
    post(emu, [row()])
    post(emu, [{"N": 7}], path=PATH.replace(STREAM, "Custom-Other_CL"))
    assert emu.rows("Custom-Other_CL") == [{"N": 7}]
    assert len(emu.rows()) == 2


@pytest.mark.parametrize(
    "body",
    [
        {"ruleId": "dcr-short"},
        {"streams": {"NoPrefix_CL": {"A": "string"}}},
        {"streams": {"Custom-A_CL": {"A": "varchar"}}},
        {"publishers": "everyone"},
    ],
)
def test_bad_config_is_refused(emu: LogsEmulator, body: dict[str, Any]) -> None:
    response = requests.post(f"{emu.url}/_emulator/config", json=body, timeout=5)
    assert response.status_code == 400


def test_runs_as_a_process_announcing_rule_and_stream() -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "devstack", "logs", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        ready = json.loads(child.stdout.readline())
        assert ready == {
            "ready": "logs",
            "url": ready["url"],
            "ruleId": RULE,
            "streams": [STREAM],
        }
        assert requests.get(f"{ready['url']}/_emulator/rows", timeout=5).json()["count"] == 0
    finally:
        child.terminate()
    assert child.wait(timeout=10) == 0
