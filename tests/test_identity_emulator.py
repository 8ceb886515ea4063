"""The identity emulator serves azure-identity's real ManagedIdentityCredential (App Service)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ManagedIdentityCredential

from devstack import graph, identity, logs, tokens
from devstack.serving import start_in_thread

# These test the local stack itself, not the bridge (`pytest -m "not devstack"`).
pytestmark = pytest.mark.devstack

HEADER = "test-identity-header"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh emulator, with the App Service environment pointing the credential at it."""
    server = identity.build_server(header=HEADER, roles=list(identity.DEFAULT_ROLES))
    url, stop = start_in_thread(server)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{url}{identity.TOKEN_PATH}")
    monkeypatch.setenv("IDENTITY_HEADER", HEADER)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    monkeypatch.delenv("MSI_ENDPOINT", raising=False)
    yield url
    stop()


def _requests(url: str) -> list[dict]:
    return requests.get(f"{url}/_emulator/requests", timeout=5).json()["requests"]


def test_real_credential_gets_a_graph_token_with_roles(emulator: str) -> None:
    token = ManagedIdentityCredential(client_id=CLIENT_ID).get_token(GRAPH_SCOPE)

    claims = tokens.verify(token.token, "https://graph.microsoft.com")
    assert claims["appid"] == CLIENT_ID
    assert claims["roles"] == ["DeviceManagementConfiguration.ReadWrite.All"]
    assert claims["idtyp"] == "app"
    assert token.expires_on == claims["exp"]
    [entry] = _requests(emulator)
    assert entry["resource"] == "https://graph.microsoft.com"
    assert entry["client_id"] == CLIENT_ID
    assert entry["status"] == 200


def test_second_get_token_is_served_from_the_credential_cache(emulator: str) -> None:
    credential = ManagedIdentityCredential(client_id=CLIENT_ID)

    first = credential.get_token(GRAPH_SCOPE)
    second = credential.get_token(GRAPH_SCOPE)

    assert first.token == second.token
    assert requests.get(f"{emulator}/_emulator/requests", timeout=5).json()["count"] == 1


def test_token_is_accepted_by_the_graph_emulator(emulator: str) -> None:
    url, stop = start_in_thread(graph.build_server(scripts=[], write_limit="0", faults=[]))
    try:
        bearer = ManagedIdentityCredential(client_id=CLIENT_ID).get_token(GRAPH_SCOPE).token
        script = "9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"
        response = requests.patch(
            f"{url}/beta/deviceManagement/deviceComplianceScripts/{script}/deviceRunStates/x",
            json={"detectionState": "success"},
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=5,
        )
    finally:
        stop()
    assert response.status_code == 200


def test_roles_from_the_environment_can_carry_device_readwrite_for_the_entra_patch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    roles = "DeviceManagementConfiguration.ReadWrite.All, Device.ReadWrite.All"
    monkeypatch.setenv("IDENTITY_EMULATOR_ROLES", roles)
    identity_url, stop_identity = start_in_thread(identity.build_server(header=HEADER))
    graph_url, stop_graph = start_in_thread(graph.build_server(scripts=[], faults=[]))
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{identity_url}{identity.TOKEN_PATH}")
    monkeypatch.setenv("IDENTITY_HEADER", HEADER)
    try:
        bearer = ManagedIdentityCredential(client_id=CLIENT_ID).get_token(GRAPH_SCOPE).token
        device = {"managedDeviceId": "0d1e2f3a-4b5c-4d6e-8f7a-8b9c0d1e2f3a"}
        [registered] = requests.post(
            f"{graph_url}/_emulator/devices", json=device, timeout=5
        ).json()["devices"]
        response = requests.patch(
            f"{graph_url}/v1.0/devices/{registered['objectId']}",
            json={"extensionAttributes": {"extensionAttribute1": "success"}},
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=5,
        )
    finally:
        stop_graph()
        stop_identity()
    assert tokens.verify(bearer, "https://graph.microsoft.com")["roles"] == [
        "DeviceManagementConfiguration.ReadWrite.All",
        "Device.ReadWrite.All",
    ]
    assert response.status_code == 204


def test_a_monitor_token_is_accepted_by_the_logs_emulator(emulator: str) -> None:
    url, stop = start_in_thread(logs.build_server(faults=[]))
    try:
        scope = f"{logs.DEFAULT_AUDIENCE}/.default"
        bearer = ManagedIdentityCredential(client_id=CLIENT_ID).get_token(scope).token
        response = requests.post(
            f"{url}/dataCollectionRules/{logs.DEFAULT_RULE_ID}/streams/{logs.DEFAULT_STREAM}",
            params={"api-version": logs.API_VERSION},
            json=[{"ReportId": "r-1"}],
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=5,
        )
    finally:
        stop()
    assert response.status_code == 204
    assert tokens.verify(bearer, "https://monitor.azure.com")["appid"] == CLIENT_ID
    assert _requests(emulator)[0]["resource"] == "https://monitor.azure.com"


def test_wrong_identity_header_is_refused(emulator: str) -> None:
    response = requests.get(
        f"{emulator}/msi/token",
        params={"api-version": "2019-08-01", "resource": "https://graph.microsoft.com"},
        headers={"X-IDENTITY-HEADER": "wrong"},
        timeout=5,
    )
    assert response.status_code == 401
    assert response.json()["statusCode"] == 401


def test_credential_with_wrong_header_fails(emulator: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "wrong")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential(client_id=CLIENT_ID).get_token(GRAPH_SCOPE)


def test_missing_resource_is_a_bad_request(emulator: str) -> None:
    response = requests.get(
        f"{emulator}/msi/token",
        params={"api-version": "2019-08-01"},
        headers={"X-IDENTITY-HEADER": HEADER},
        timeout=5,
    )
    assert response.status_code == 400


def test_configured_roles_and_lifetime_apply_at_runtime(emulator: str) -> None:
    requests.post(
        f"{emulator}/_emulator/config", json={"roles": [], "lifetime": 600}, timeout=5
    ).raise_for_status()

    token = ManagedIdentityCredential(client_id=CLIENT_ID).get_token(GRAPH_SCOPE)

    claims = tokens.verify(token.token, "https://graph.microsoft.com")
    assert claims["roles"] == []
    assert claims["exp"] - claims["iat"] == 600


def test_injected_failure_count_is_retried_by_the_credential(emulator: str) -> None:
    requests.post(
        f"{emulator}/_emulator/config", json={"fail": {"status": 500, "count": 1}}, timeout=5
    ).raise_for_status()

    ManagedIdentityCredential(client_id=CLIENT_ID).get_token(GRAPH_SCOPE)

    assert [entry["status"] for entry in _requests(emulator)] == [500, 200]


def test_injected_failure_surfaces_when_retries_are_off(emulator: str) -> None:
    requests.post(
        f"{emulator}/_emulator/config", json={"fail": {"status": 503, "seconds": 30}}, timeout=5
    ).raise_for_status()

    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential(client_id=CLIENT_ID, retry_total=0).get_token(GRAPH_SCOPE)

    requests.post(f"{emulator}/_emulator/reset", timeout=5).raise_for_status()
    assert _requests(emulator) == []


def test_runs_as_a_process_and_announces_readiness() -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "devstack.identity", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        ready = json.loads(child.stdout.readline())
        assert ready["ready"] == "identity"
        assert requests.get(f"{ready['url']}/_emulator/requests", timeout=5).json()["count"] == 0
    finally:
        child.terminate()
    assert child.wait(timeout=10) == 0
