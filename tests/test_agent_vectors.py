"""The protocol vectors pass the bridge's own checks: shared/auth.py's signature verification (the
standardwebhooks library, as the bridge calls it) and the agent-API schema. The agents' tests hold
them to the same vectors, so an agent that matches the file is one the bridge accepts.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

import pytest
import standardwebhooks.webhooks

from shared.auth import AuthError, authenticate
from shared.models import ComplianceReport
from shared.settings import Settings
from tests.agent_vectors import VECTORS, Vector
from tests.stack import UNREACHABLE_STORAGE

BY_NAME = [pytest.param(v, id=v.name) for v in VECTORS]


def hmac_settings(vector: Vector) -> Settings:
    return Settings.model_validate(
        {
            "BRIDGE_DELIVERY_MODE": "sync",
            "BRIDGE_AUTH_MODE": "hmac",
            "BRIDGE_HMAC_SECRETS": vector.secret,
            "AzureWebJobsStorage": UNREACHABLE_STORAGE,
        }
    )


def signed_at(vector: Vector) -> datetime:
    return datetime.fromtimestamp(vector.timestamp, UTC)


@pytest.fixture
def bridge_clock_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[Vector], datetime]:
    """Set the bridge's clock to a vector's signing time, inside standardwebhooks too.

    shared/auth.py passes its `now` to its own window checks, but the library it calls still
    reads the real clock for its five-minute tolerance, so a fixed vector needs both moved.
    """

    def move(vector: Vector) -> datetime:
        moment = signed_at(vector)

        class Frozen(datetime):
            @classmethod
            def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
                return moment.astimezone(tz)

        monkeypatch.setattr(standardwebhooks.webhooks, "datetime", Frozen)
        return moment

    return move


def test_the_vectors_cover_the_cases_agents_get_wrong() -> None:
    """Escapes, non-ASCII, a key with zero bytes, the longest key, a timeout and empty output;
    and characters some JSON writers escape but the vectors keep raw (Windows PowerShell 5.1's
    ConvertTo-Json writes ' < > & and U+2028 as \\u escapes)."""
    bodies = "".join(v.body for v in VECTORS)
    for needle in ('\\"', "\\\\", "\\r\\n", "\\t", "\\b", "\\f", "\\u0001", "é", "😀"):
        assert needle in bodies
    for raw in ("'", "<", ">", "&", "\u007f", "\u2028", "\u2029"):
        assert raw in bodies
    assert "\\u0027" not in bodies and "\\u003c" not in bodies and "\\u2028" not in bodies
    keys = [base64.b64decode(v.secret.removeprefix("whsec_")) for v in VECTORS]
    assert any(0 in key for key in keys)
    assert {24, 64} <= {len(key) for key in keys}  # the bridge's shortest and longest secrets
    assert {v.input["timedOut"] for v in VECTORS} == {True, False}
    assert any(v.input["stdout"] == "" for v in VECTORS)


@pytest.mark.parametrize("vector", BY_NAME)
def test_each_vector_passes_the_bridge_signature_check(
    vector: Vector, bridge_clock_at: Callable[[Vector], datetime]
) -> None:
    now = bridge_clock_at(vector)
    identity = authenticate(hmac_settings(vector), vector.headers, vector.body_bytes, now=now)
    assert identity.webhook_id == vector.webhook_id


@pytest.mark.parametrize("vector", BY_NAME)
def test_a_vector_body_changed_by_one_byte_is_refused(
    vector: Vector, bridge_clock_at: Callable[[Vector], datetime]
) -> None:
    now = bridge_clock_at(vector)
    tampered = vector.body_bytes.replace(b'"deviceId":"6', b'"deviceId":"7', 1)
    assert tampered != vector.body_bytes
    with pytest.raises(AuthError) as refused:
        authenticate(hmac_settings(vector), vector.headers, tampered, now=now)
    assert refused.value.slug == "signature-invalid"


@pytest.mark.parametrize("vector", BY_NAME)
def test_each_vector_body_is_a_valid_report_carrying_its_input(vector: Vector) -> None:
    data = json.loads(vector.body)
    report = ComplianceReport.model_validate(data, context={"now": signed_at(vector)})
    assert report.report_id == vector.webhook_id
    fields = ("exitCode", "stdout", "stderr", "startedAt", "finishedAt", "timedOut")
    assert data["execution"] == {k: vector.input[k] for k in fields}
    assert (data["deviceId"], data["scriptId"]) == (
        vector.input["deviceId"],
        vector.input["scriptId"],
    )
