"""HMAC mode (Standard Webhooks): only a fresh request signed with a configured secret is heard,
old and new secrets overlap during rotation, and a replayed request is an idempotent success.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from shared.api import PROBLEM_JSON, ApiResponse, ingest
from shared.runtime import Bridge
from shared.settings import Settings, SettingsError
from tests.conftest import IDENTITY_HEADER
from tests.stack import (
    INGEST,
    NO_QUEUE_TRIGGERS,
    UNREACHABLE_STORAGE,
    Emulator,
    HostFactory,
    Process,
    StorageView,
    host_env,
    report_body,
    start_process,
    wait_for,
)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


OLD_SECRET, NEW_SECRET, STRANGER = new_secret(), new_secret(), new_secret()
JSON = {"Content-Type": "application/json"}


def signed(
    body: bytes,
    secret: str = OLD_SECRET,
    *,
    msg_id: str | None = None,
    skew: float = 0,
) -> dict[str, str]:
    """Headers as a Standard Webhooks sender makes them, `skew` seconds off the real clock."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    when = datetime.fromtimestamp(time.time() + skew, UTC)
    return {
        **JSON,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body.decode()),
    }


class UnreachableGraph:
    """Stands in for Graph where a refused request must never get that far."""

    def patch_run_state(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("a refused report reached Graph")


def post_in_process(headers: dict[str, str], body: bytes) -> ApiResponse:
    settings = Settings.model_validate(
        {
            "BRIDGE_DELIVERY_MODE": "sync",
            "BRIDGE_AUTH_MODE": "hmac",
            "BRIDGE_HMAC_SECRETS": f"{OLD_SECRET}, {NEW_SECRET}",
            "AzureWebJobsStorage": UNREACHABLE_STORAGE,
        }
    )
    bridge = Bridge(settings=settings, graph=UnreachableGraph())  # type: ignore[arg-type]
    return ingest("POST", headers, body, bridge=bridge)


BODY = json.dumps(report_body()).encode()
TAMPERED = json.dumps(report_body(detectionState="success")).encode()
SIG, TS = "webhook-signature", "webhook-timestamp"


# Each row turns a freshly signed, valid set of headers into a bad one. Signing happens when the
# test runs, not at import, so a long suite can never age a row into a different refusal.
Spoil = Callable[[dict[str, str]], dict[str, str]]


def put(**changes: str | None) -> Spoil:
    """Set (or with `None`, drop) headers; `webhook_id` names `webhook-id`."""
    names = {k.replace("_", "-"): v for k, v in changes.items()}
    return lambda good: {k: v for k, v in {**good, **names}.items() if v is not None}


def respell(name: str, how: Callable[[str], str]) -> Spoil:
    return lambda good: {**good, name: how(good[name])}


def resign(**how: Any) -> Spoil:
    return lambda _: signed(BODY, **how)


# (id, spoil, body, slug); every row is a 401 and none reaches Graph
REFUSALS: list[tuple[str, Spoil, bytes, str]] = [
    ("wrong-secret", resign(secret=STRANGER), BODY, "signature-invalid"),
    ("tampered-body", put(), TAMPERED, "signature-invalid"),
    ("signed-for-another-id", put(webhook_id="msg_other"), BODY, "signature-invalid"),
    ("six-minutes-old", resign(skew=-360), BODY, "timestamp-too-old"),
    ("six-minutes-ahead", resign(skew=360), BODY, "timestamp-too-new"),
    ("no-signature-headers", lambda _: JSON, BODY, "signature-missing"),
    ("no-webhook-id", put(webhook_id=None), BODY, "signature-missing"),
    ("no-timestamp", put(webhook_timestamp=None), BODY, "signature-missing"),
    ("no-signature", put(webhook_signature=None), BODY, "signature-missing"),
    ("unversioned", put(webhook_signature="Zm9v"), BODY, "signature-malformed"),
    ("version-only", put(webhook_signature="v1,"), BODY, "signature-malformed"),
    ("two-commas", put(webhook_signature="v1,a,b"), BODY, "signature-malformed"),
    ("not-base64", put(webhook_signature="v1,!!!!"), BODY, "signature-malformed"),
    ("double-space", respell(SIG, lambda v: v + "  v1,Zm9v"), BODY, "signature-malformed"),
    ("oversized", put(webhook_signature=" ".join(["v1,Zm9v"] * 500)), BODY, "signature-malformed"),
    ("trailing-newline", respell(SIG, lambda v: v + "\n"), BODY, "signature-malformed"),
    ("timestamp-exponent", put(webhook_timestamp="1e9"), BODY, "timestamp-invalid"),
    ("timestamp-fraction", respell(TS, lambda v: v + ".5"), BODY, "timestamp-invalid"),
    # A re-spelled timestamp verifies like the original: refusing it keeps replays recognisable.
    ("timestamp-leading-zero", respell(TS, lambda v: "0" + v), BODY, "timestamp-invalid"),
    ("timestamp-newline", respell(TS, lambda v: v + "\n"), BODY, "timestamp-invalid"),
    ("webhook-id-newline", resign(msg_id="msg\n"), BODY, "webhook-id-invalid"),
    ("webhook-id-with-slash", resign(msg_id="a/b"), BODY, "webhook-id-invalid"),
    ("webhook-id-too-long", resign(msg_id="m" * 65), BODY, "webhook-id-invalid"),
    ("webhook-id-with-crlf", resign(msg_id="m\r\nforged: 1"), BODY, "webhook-id-invalid"),
]


@pytest.mark.parametrize(
    ("spoil", "body", "slug"), [pytest.param(*row[1:], id=row[0]) for row in REFUSALS]
)
def test_each_bad_signature_is_refused_with_its_own_reason(
    spoil: Spoil, body: bytes, slug: str
) -> None:
    headers = spoil(signed(BODY))
    response = post_in_process(headers, body)
    assert response.status == 401
    assert response.content_type == PROBLEM_JSON
    assert response.body["type"].endswith(f":{slug}")
    text = response.body_bytes().decode()
    for secret in (OLD_SECRET, NEW_SECRET, STRANGER):
        assert secret.removeprefix("whsec_") not in text
    signature = headers.get("webhook-signature", "").partition(",")[2]
    assert not signature or signature[:20] not in text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("", "BRIDGE_HMAC_SECRETS is required", id="missing"),
        pytest.param("c2VjcmV0", "must start with whsec_", id="no-prefix"),
        pytest.param("whsec_!!!", "not valid base64", id="not-base64"),
        pytest.param("whsec_" + base64.b64encode(b"short").decode(), "24 to 64", id="too-short"),
    ],
)
def test_an_unusable_secret_fails_at_start_up_without_showing_it(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as error:
        Settings.from_env(
            {
                "BRIDGE_DELIVERY_MODE": "sync",
                "BRIDGE_AUTH_MODE": "hmac",
                "BRIDGE_HMAC_SECRETS": value,
                "AzureWebJobsStorage": UNREACHABLE_STORAGE,
            }
        )
    assert not value or value not in str(error.value)


def test_secrets_never_appear_in_the_settings_repr() -> None:
    settings = Settings.model_validate(
        {
            "BRIDGE_DELIVERY_MODE": "sync",
            "BRIDGE_AUTH_MODE": "hmac",
            "BRIDGE_HMAC_SECRETS": f"{OLD_SECRET} {NEW_SECRET}",
            "AzureWebJobsStorage": UNREACHABLE_STORAGE,
        }
    )
    assert len(settings.hmac_secrets) == 2
    assert OLD_SECRET not in repr(settings)
    assert OLD_SECRET not in str(settings.hmac_secrets)


# --- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hmac_host(
    graph_emulator: Emulator, identity_emulator: Emulator, storage_view: StorageView
) -> Iterator[Process]:
    env = host_env(
        graph_emulator.url,
        identity_emulator.url,
        IDENTITY_HEADER,
        AzureWebJobsStorage=storage_view.connection_string,
        BRIDGE_AUTH_MODE="hmac",
        BRIDGE_HMAC_SECRETS=f"{OLD_SECRET},{NEW_SECRET}",
    )
    env |= NO_QUEUE_TRIGGERS
    process = start_process(["host", "--port", "0"], env)
    yield process
    process.stop()


def send(host: Process, headers: dict[str, str], body: bytes) -> requests.Response:
    return requests.post(host.url + INGEST, data=body, headers=headers, timeout=30)


def test_a_validly_signed_report_is_delivered_under_its_webhook_id(
    hmac_host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    response = send(hmac_host, signed(BODY, msg_id="msg_valid-1"), BODY)
    assert response.status_code == 200, response.text
    assert response.json()["reportId"] == "msg_valid-1"
    assert len(graph.states()) == 1


def test_a_body_report_id_wins_over_the_webhook_id(
    hmac_host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    body = json.dumps(report_body(reportId="agent-chosen")).encode()
    response = send(hmac_host, signed(body), body)
    assert response.status_code == 200, response.text
    assert response.json()["reportId"] == "agent-chosen"


@pytest.mark.parametrize("secret", [OLD_SECRET, NEW_SECRET], ids=["old-secret", "new-secret"])
def test_old_and_new_secrets_are_both_accepted_during_rotation(
    hmac_host: Process, emulators: tuple[Emulator, Emulator], secret: str
) -> None:
    response = send(hmac_host, signed(BODY, secret), BODY)
    assert response.status_code == 200, response.text


def test_a_sender_signing_with_both_secrets_is_accepted(
    hmac_host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    headers = signed(BODY, STRANGER)
    both = signed(BODY, NEW_SECRET, msg_id=headers["webhook-id"])
    headers["webhook-signature"] += " " + both["webhook-signature"]
    headers["webhook-timestamp"] = both["webhook-timestamp"]
    response = send(hmac_host, headers, BODY)
    assert response.status_code == 200, response.text


def test_a_secret_outside_the_configured_set_is_refused_over_http(
    hmac_host: Process, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    response = send(hmac_host, signed(BODY, STRANGER), BODY)
    assert response.status_code == 401
    assert response.json()["type"].endswith(":signature-invalid")
    assert graph.requests() == []


def test_a_replayed_signed_request_is_an_idempotent_success_on_another_instance(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    """Standard Webhooks: `webhook-id` is the idempotency key. A sender that lost the answer and
    resends the same signed request gets success, on whichever instance it lands, and nothing
    changes: the run-state table, shared by every instance, already holds that version."""
    graph, _ = emulators
    settings = {"BRIDGE_AUTH_MODE": "hmac", "BRIDGE_HMAC_SECRETS": OLD_SECRET}
    first, second = start_queue_host(**settings), start_queue_host(**settings)
    captured = signed(BODY, msg_id="msg_lost-answer")
    accepted = send(first, captured, BODY)
    assert accepted.status_code == 202, accepted.text
    wait_for(graph.states)
    for host in (second, first):
        replay = send(host, captured, BODY)
        assert replay.status_code == 200, replay.text
        assert replay.json() == {
            "reportId": "msg_lost-answer",
            "status": "ignored",
            "reason": "duplicate",
        }
    time.sleep(2)  # time for a second write to land, if either host made one
    assert len([r for r in graph.requests() if r["method"] == "PATCH"]) == 1
    assert storage.queued() == 0
