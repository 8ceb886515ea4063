"""Certificate mode: only a device certificate chaining to a pinned Intune CA speaks, and only for
the device its subject CN names. Refusals are checked in process; acceptance end to end.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from shared.api import PROBLEM_JSON, ingest
from shared.auth import authenticate
from shared.runtime import Bridge
from shared.settings import Settings, SettingsError
from tests.certs import OTHER_TENANT, TENANT, header, tenant_extension, trusted, untrusted
from tests.conftest import IDENTITY_HEADER
from tests.stack import (
    DEVICE,
    INGEST,
    NO_QUEUE_TRIGGERS,
    SCRIPT,
    UNREACHABLE_STORAGE,
    Emulator,
    Process,
    StorageView,
    host_env,
    report_body,
    start_process,
)

JSON = {"Content-Type": "application/json"}
NOW = datetime.now(UTC)


class UnreachableGraph:
    """Stands in for Graph where a refused request must never get that far."""

    def patch_run_state(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("a refused report reached Graph")


def cert_settings(**extra: str) -> Settings:
    return Settings.model_validate(
        {
            "BRIDGE_DELIVERY_MODE": "sync",
            "BRIDGE_AUTH_MODE": "certificate",
            "BRIDGE_TRUSTED_CA_CERTS": trusted().bundle_pem,
            "AzureWebJobsStorage": UNREACHABLE_STORAGE,
            **extra,
        }
    )


def post_in_process(cert_header: str | None, body: dict[str, Any] | None = None) -> Any:
    headers = dict(JSON)
    if cert_header is not None:
        headers["X-ARR-ClientCert"] = cert_header
    bridge = Bridge(settings=cert_settings(), graph=UnreachableGraph())  # type: ignore[arg-type]
    return ingest("POST", headers, json.dumps(body or report_body()).encode(), bridge=bridge)


def _der_b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


EXPIRED = trusted().leaf(DEVICE, not_before=NOW - timedelta(days=400), not_after=NOW - timedelta(1))
NOT_YET_VALID = trusted().leaf(DEVICE, not_before=NOW + timedelta(days=1))
NO_EKU = trusted().leaf(DEVICE, usages=None)
SERVER_AUTH_ONLY = trusted().leaf(DEVICE, usages=(ExtendedKeyUsageOID.SERVER_AUTH,))
SELF_SIGNED = trusted().leaf(DEVICE, self_signed=True)  # issuer name says Intune; key says no
ROGUE_CHAIN = untrusted().leaf(DEVICE)
NOT_A_DEVICE = trusted().leaf(common_name="laptop-42")

# (id, X-ARR-ClientCert value or None, status, slug)
REFUSALS: list[tuple[str, str | None, int, str]] = [
    ("missing-header", None, 401, "certificate-missing"),
    ("empty-header", "", 401, "certificate-missing"),
    ("garbage-base64", "not base64 at all!*", 401, "certificate-malformed"),
    ("base64-of-non-der", _der_b64(b"hello, I am a certificate"), 401, "certificate-malformed"),
    ("pem-instead-of-der", "-----BEGIN CERTIFICATE-----", 401, "certificate-malformed"),
    ("oversized-header", "A" * 64 * 1024, 401, "certificate-too-large"),
    ("expired", header(EXPIRED), 401, "certificate-expired"),
    ("not-yet-valid", header(NOT_YET_VALID), 401, "certificate-not-yet-valid"),
    ("no-extended-key-usage", header(NO_EKU), 401, "certificate-missing-client-auth"),
    ("server-auth-only", header(SERVER_AUTH_ONLY), 401, "certificate-missing-client-auth"),
    ("self-signed-with-intune-issuer-name", header(SELF_SIGNED), 401, "certificate-untrusted"),
    ("chain-to-untrusted-root", header(ROGUE_CHAIN), 401, "certificate-untrusted"),
    ("cn-is-not-a-device-id", header(NOT_A_DEVICE), 403, "certificate-not-a-device"),
]


@pytest.mark.parametrize(
    ("cert_header", "status", "slug"), [pytest.param(*row[1:], id=row[0]) for row in REFUSALS]
)
def test_each_bad_certificate_is_refused_with_its_own_reason(
    cert_header: str | None, status: int, slug: str
) -> None:
    response = post_in_process(cert_header)
    assert response.status == status
    assert response.content_type == PROBLEM_JSON
    assert response.body["type"].endswith(f":{slug}")
    assert response.body["status"] == status
    text = response.body_bytes().decode()
    if cert_header:
        assert cert_header[:40] not in text  # the certificate is never echoed


def test_refusal_details_are_distinct_so_an_administrator_can_tell_them_apart() -> None:
    details = {post_in_process(row[1]).body["detail"] for row in REFUSALS}
    assert len(details) == len({row[3] for row in REFUSALS})


def test_a_good_leaf_names_its_device_in_process() -> None:
    device = str(uuid.uuid4())
    settings = cert_settings()
    cert = trusted().leaf(device.upper())
    identity = authenticate(settings, {"X-ARR-ClientCert": header(cert)}, b"{}", now=NOW)
    assert identity.device_id == device  # canonical lower-case, compared with the body's


def test_a_certificate_for_device_a_cannot_speak_for_device_b_in_process() -> None:
    other = str(uuid.uuid4())
    response = post_in_process(header(trusted().leaf(DEVICE)), report_body(deviceId=other))
    assert response.status == 403
    assert response.body["type"].endswith(":device-mismatch")


# --- settings ------------------------------------------------------------------------------------


def test_the_bundle_may_be_pem_text_a_file_or_pem_that_lost_its_line_breaks(tmp_path: Path) -> None:
    pem = trusted().bundle_pem
    path = tmp_path / "intune-ca.pem"
    path.write_text(pem)
    flattened = pem.replace("\n", " ")
    escaped = pem.replace("\n", "\\n")
    bundles = {
        cert_settings(BRIDGE_TRUSTED_CA_CERTS=value).trusted_ca_certs
        for value in (pem, str(path), flattened, escaped)
    }
    assert len(bundles) == 1
    assert len(bundles.pop()) == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("/nonexistent/intune.pem", "neither PEM text nor a readable", id="no-file"),
        pytest.param("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----", "not valid",
                     id="broken-pem"),
        pytest.param(
            trusted().intermediate.public_bytes(Encoding.PEM).decode(),
            "no self-signed root",
            id="intermediate-only",
        ),
    ],
)  # fmt: skip
def test_an_unusable_bundle_fails_at_start_up(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"BRIDGE_AUTH_MODE": "certificate", "BRIDGE_TRUSTED_CA_CERTS": value})


def test_certificate_mode_without_a_bundle_fails_at_start_up() -> None:
    with pytest.raises(SettingsError, match="BRIDGE_TRUSTED_CA_CERTS is required"):
        Settings.from_env({"BRIDGE_DELIVERY_MODE": "sync", "BRIDGE_AUTH_MODE": "certificate"})


# --- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_host(
    graph_emulator: Emulator, identity_emulator: Emulator, storage_view: StorageView
) -> Iterator[Process]:
    env = host_env(
        graph_emulator.url,
        identity_emulator.url,
        IDENTITY_HEADER,
        AzureWebJobsStorage=storage_view.connection_string,
        BRIDGE_AUTH_MODE="certificate",
        BRIDGE_TRUSTED_CA_CERTS=trusted().bundle_pem,
    )
    env |= NO_QUEUE_TRIGGERS
    process = start_process(["host", "--port", "0"], env)
    yield process
    process.stop()


def post(host: Process, cert: x509.Certificate | None, body: dict[str, Any]) -> requests.Response:
    headers = {"X-ARR-ClientCert": header(cert)} if cert is not None else {}
    return requests.post(host.url + INGEST, json=body, headers=headers, timeout=30)


def test_a_good_device_certificate_is_accepted_and_its_report_delivered(
    cert_host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    response = post(cert_host, trusted().leaf(DEVICE), report_body())
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "delivered"
    [state] = graph.states()
    assert state["runStateId"] == f"{SCRIPT}:{DEVICE}"


def test_device_a_certificate_never_writes_device_b_state(
    cert_host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    device_a, device_b = str(uuid.uuid4()), str(uuid.uuid4())
    response = post(cert_host, trusted().leaf(device_a), report_body(deviceId=device_b))
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["type"].endswith(":device-mismatch")
    assert graph.requests() == []
    assert graph.states() == []


def test_a_refused_certificate_never_reaches_graph_over_http(
    cert_host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    for cert in (None, ROGUE_CHAIN, SELF_SIGNED, EXPIRED):
        response = post(cert_host, cert, report_body())
        assert response.status_code == 401
    assert graph.requests() == []


# --- the tenant the certificate was issued to ----------------------------------------------------


def post_with_tenant(cert: x509.Certificate, **extra: str) -> Any:
    settings = cert_settings(**extra)
    bridge = Bridge(settings=settings, graph=UnreachableGraph())  # type: ignore[arg-type]
    body = json.dumps(report_body(deviceId="not-a-guid")).encode()  # 422: past authentication
    return ingest("POST", {**JSON, "X-ARR-ClientCert": header(cert)}, body, bridge=bridge)


def test_a_certificate_of_another_tenant_is_refused_when_the_tenant_is_pinned() -> None:
    other = trusted().leaf(DEVICE, tenant_id=OTHER_TENANT)
    refused = post_with_tenant(other, BRIDGE_TENANT_ID=TENANT)
    assert refused.status == 401
    assert refused.body["type"].endswith(":certificate-wrong-tenant")
    ours = trusted().leaf(DEVICE, tenant_id=TENANT.upper())
    assert post_with_tenant(ours, BRIDGE_TENANT_ID=TENANT).status == 422


def test_without_a_pinned_tenant_every_tenant_chains_as_before() -> None:
    assert post_with_tenant(trusted().leaf(DEVICE, tenant_id=OTHER_TENANT)).status == 422


def test_the_tenant_is_read_in_microsofts_byte_order_not_as_big_endian() -> None:
    big_endian = b"\x04\x10" + uuid.UUID(TENANT).bytes
    cert = trusted().leaf(DEVICE, tenant_value=big_endian)
    assert post_with_tenant(cert, BRIDGE_TENANT_ID=TENANT).status == 401
    assert tenant_extension(TENANT)[2:] == uuid.UUID(TENANT).bytes_le


def test_a_certificate_without_a_tenant_is_accepted_and_telemetry_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    response = post_with_tenant(trusted().leaf(DEVICE), BRIDGE_TENANT_ID=TENANT)
    assert response.status == 422
    events = [getattr(r, "microsoft.custom_event.name", None) for r in caplog.records]
    assert "certificateWithoutTenant" in events


@pytest.mark.parametrize(
    "value", [b"\x04\x0f" + b"\x00" * 15, b"\x04\x10" + b"\x00" * 15, b"\x02\x10" + b"\x00" * 16]
)
def test_an_unreadable_tenant_extension_is_refused_when_the_tenant_is_pinned(value: bytes) -> None:
    response = post_with_tenant(trusted().leaf(DEVICE, tenant_value=value), BRIDGE_TENANT_ID=TENANT)
    assert response.status == 401
    assert response.body["type"].endswith(":certificate-malformed")
