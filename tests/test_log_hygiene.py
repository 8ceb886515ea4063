"""Logs are read by more people than secrets are: run the security scenarios and prove that no
secret, signature, token or certificate, and no raw CR/LF a client sent, reaches any log record
(in process, including the custom dimensions sent to Application Insights) or a host's stderr.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import uuid
from datetime import UTC, datetime

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from shared.api import ingest
from shared.runtime import Bridge
from shared.settings import Settings
from tests.certs import header, trusted, untrusted
from tests.conftest import IDENTITY_HEADER
from tests.stack import CLIENT_ID, INGEST, Emulator, HostFactory, StorageView, report_body

SECRET, OLD_SECRET, STRANGER = (
    "whsec_" + base64.b64encode(os.urandom(32)).decode() for _ in range(3)
)
MARKER = "INJECTED-LOG-LINE"
CRLF = f"x\r\n{MARKER}: forged\rmore\n"


def sign(body: bytes, secret: str = SECRET, msg_id: str | None = None) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
    }


def scenarios(device: str) -> list[tuple[str, dict[str, str], bytes]]:
    """(name, headers, body): one accepted report and the refusals an attacker would try."""
    good_cert = header(trusted().leaf(device))
    body = json.dumps(report_body(deviceId=device)).encode()
    crlf_body = json.dumps(report_body(deviceId=device, reportId=CRLF)).encode()
    other_body = json.dumps(report_body(deviceId=str(uuid.uuid4()))).encode()

    def headers(
        signed: bytes = body, secret: str = SECRET, msg_id: str | None = None, **extra: str
    ) -> dict[str, str]:
        base = {"Content-Type": "application/json", "X-ARR-ClientCert": good_cert}
        return {
            **base,
            **sign(signed, secret, msg_id),
            **{k.replace("_", "-"): v for k, v in extra.items()},
        }

    good = headers()
    return [
        ("accepted", good, body),
        ("replayed", good, body),
        ("old-secret", headers(secret=OLD_SECRET), body),
        ("wrong-secret", headers(secret=STRANGER), body),
        ("tampered", headers(), body + b" "),
        ("rogue-chain", headers(X_ARR_ClientCert=header(untrusted().leaf(device))), body),
        (
            "self-signed",
            headers(X_ARR_ClientCert=header(trusted().leaf(device, self_signed=True))),
            body,
        ),
        ("garbage-cert", headers(X_ARR_ClientCert=good_cert[::-1]), body),
        ("pem-cert", headers(X_ARR_ClientCert=trusted().bundle_pem), body),
        ("device-mismatch", headers(other_body), other_body),
        ("crlf-in-report-id", headers(crlf_body), crlf_body),
        ("crlf-in-webhook-id", headers(msg_id=CRLF), body),
        ("crlf-in-certificate", headers(X_ARR_ClientCert=CRLF), body),
        ("crlf-in-timestamp", headers(webhook_timestamp=CRLF), body),
        ("crlf-in-signature", headers(webhook_signature="v1," + CRLF), body),
        ("function-key", headers(x_functions_key=STRANGER), body),
    ]


def forbidden(headers_sent: list[dict[str, str]]) -> list[str]:
    """Every credential-like string the scenarios sent; `eyJ` opens every token minted."""
    out = [SECRET, OLD_SECRET, STRANGER, "eyJ", "BEGIN CERTIFICATE"]
    out += [s.removeprefix("whsec_") for s in (SECRET, OLD_SECRET, STRANGER)]
    out += [header(trusted().root)[:48], header(trusted().intermediate)[:48]]
    for headers in headers_sent:
        for name in ("X-ARR-ClientCert", "webhook-signature", "x-functions-key"):
            value = headers.get(name, "")
            for part in value.replace(",", " ").split():
                if len(part) >= 16 and MARKER not in part:
                    out.append(part[:48])
    return out


def assert_clean(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{where} holds a credential ({secret[:6]}...)"
    assert f"\n{MARKER}" not in text and f"\r{MARKER}" not in text, f"{where}: client CR/LF"


def record_text(record: logging.LogRecord) -> str:
    """The message, any traceback, and every attribute (custom dimensions included)."""
    formatted = logging.Formatter("%(name)s %(levelname)s %(message)s").format(record)
    return formatted + " " + repr(record.__dict__)


@pytest.fixture
def bridge(
    emulators: tuple[Emulator, Emulator], monkeypatch: pytest.MonkeyPatch, storage: StorageView
) -> Bridge:
    """A real bridge in this process: the real credential code, against both emulators."""
    graph, identity = emulators
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{identity.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    settings = Settings.model_validate(
        {
            "GRAPH_BASE_URL": f"{graph.url}/beta",
            "AZURE_CLIENT_ID": CLIENT_ID,
            "BRIDGE_DELIVERY_MODE": "sync",
            "BRIDGE_AUTH_MODE": "certificate,hmac",
            "BRIDGE_TRUSTED_CA_CERTS": trusted().bundle_pem,
            "BRIDGE_HMAC_SECRETS": f"{SECRET} {OLD_SECRET}",
            "AzureWebJobsStorage": storage.connection_string,
        }
    )
    return Bridge.from_settings(settings)


def test_security_scenarios_in_process_leave_no_credential_in_any_log_record(
    bridge: Bridge, emulators: tuple[Emulator, Emulator], caplog: pytest.LogCaptureFixture
) -> None:
    graph, _ = emulators
    caplog.set_level(logging.DEBUG)  # the root logger: azure-identity, urllib3, the bridge
    sent = scenarios(str(uuid.uuid4()))
    answers = {name: ingest("POST", headers, body, bridge=bridge) for name, headers, body in sent}
    assert answers["accepted"].status == 200, answers["accepted"].body
    assert answers["old-secret"].status == 200
    # A replay is an idempotent success (Standard Webhooks); the same run state is written.
    assert answers["replayed"].status == 200
    assert answers["device-mismatch"].status == 403
    assert len(graph.states()) == 1
    assert caplog.records, "nothing was logged: the test would prove nothing"
    secrets = forbidden([headers for _, headers, _ in sent])
    for record in caplog.records:
        if record.name.startswith("bridge"):  # the bridge's own lines are single lines
            assert "\r" not in record.getMessage() and "\n" not in record.getMessage()
        assert_clean(record_text(record), secrets, f"a log record of {record.name}")
    for answer in answers.values():
        assert_clean(answer.body_bytes().decode(), secrets, "a response body")


def test_security_scenarios_over_http_leave_no_credential_in_the_host_output(
    start_host: HostFactory, emulators: tuple[Emulator, Emulator]
) -> None:
    host = start_host(
        BRIDGE_AUTH_MODE="certificate,hmac",
        BRIDGE_TRUSTED_CA_CERTS=trusted().bundle_pem,
        BRIDGE_HMAC_SECRETS=f"{SECRET},{OLD_SECRET}",
    )
    # HTTP cannot carry CR/LF in a header, so those scenarios run in process only.
    sent = [
        (name, headers, body)
        for name, headers, body in scenarios(str(uuid.uuid4()))
        if not any("\r" in value or "\n" in value for value in headers.values())
    ]
    statuses = {}
    for name, headers, body in sent:
        url = f"{host.url}{INGEST}?code={STRANGER}"  # a key in the URL must not reach the log
        statuses[name] = requests.post(url, headers=headers, data=body, timeout=30).status_code
    assert statuses["accepted"] == 200
    assert statuses["rogue-chain"] == 401
    assert statuses["crlf-in-report-id"] == 422
    time.sleep(0.3)  # let the host's stderr reader catch up
    assert host.output, "the host logged nothing: the test would prove nothing"
    assert_clean(host.output, forbidden([headers for _, headers, _ in sent]), "host stderr")
