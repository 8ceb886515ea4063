"""Hostile input, generated: whatever arrives at the ingest function, the answer is a deliberate
status with problem+json for errors, never an unhandled exception and never a 5xx of the bridge's
own making. Runs in process through `function_app`, with Graph on a port that refuses connections.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

import function_app
from shared import runtime
from shared.settings import get_settings
from tests.certs import header, trusted, untrusted
from tests.conftest import IDENTITY_HEADER
from tests.stack import CLIENT_ID, SCRIPT, Emulator, StorageView

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
FUZZ_DEVICE = str(uuid.uuid4())  # its own device, so its rate-limit bucket is its own too
OTHER_DEVICE = str(uuid.uuid4())  # what the certificate must never be allowed to write
GOOD_CERT = header(trusted().leaf(FUZZ_DEVICE))
ROGUE_CERT = header(untrusted().leaf(FUZZ_DEVICE))
HANDLER = function_app.ingest.build().get_user_function()
# A 503 is deliberate when Graph (here: nobody listening) could not take the report.
GRAPH_OUTCOMES = {502, 503}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
guids = st.sampled_from([FUZZ_DEVICE, SCRIPT, str(uuid.uuid4())]) | st.uuids().map(str)
timestamps = st.sampled_from(
    ["2026-11-28T10:00:02Z", "2026-11-28T10:00:02", "2099-01-01T00:00:00Z", "yesterday"]
) | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
executions = st.fixed_dictionaries(
    {"finishedAt": timestamps},
    optional={
        "exitCode": st.none() | st.integers() | st.text(max_size=3),
        "stdout": st.text(max_size=80) | json_values.map(json.dumps),
        "stderr": st.text(max_size=40),
        "startedAt": timestamps,
        "timedOut": st.booleans() | json_scalars,
    },
)
states = st.fixed_dictionaries(
    {"detectionState": st.sampled_from(["success", "fail", "scriptError", "Success"])},
    optional={
        "lastStateUpdateDateTime": timestamps,
        "id": json_scalars,
        "scriptOutput": json_values,
    },
)
reports = st.fixed_dictionaries(
    {"deviceId": guids | json_scalars, "scriptId": guids | json_scalars},
    optional={
        "execution": executions | json_values,
        "state": states,
        "reportId": st.text(max_size=70) | st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
        "detectionState": st.sampled_from(["success", "fail", "pending", "bogus"]) | json_scalars,
        "nextRunAt": timestamps,
        "lastSyncAt": timestamps,
    },
)
past = st.datetimes(
    min_value=datetime(2020, 1, 1),
    max_value=datetime.now() - timedelta(days=1),
    timezones=st.just(UTC),
).map(lambda d: d.isoformat())
# Well-formed reports from the fuzzed device, so a share of examples reaches mapping and Graph.
plausible = st.fixed_dictionaries(
    {
        "deviceId": st.sampled_from([FUZZ_DEVICE, OTHER_DEVICE]),
        "scriptId": st.just(SCRIPT),
        "execution": st.fixed_dictionaries(
            {"finishedAt": past},
            optional={
                "exitCode": st.none() | st.integers(-(2**31), 2**31),
                "stdout": st.text(max_size=200) | json_values.map(json.dumps),
                "stderr": st.text(max_size=80),
                "timedOut": st.booleans(),
            },
        ),
    },
    optional={"reportId": st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)},
)
bodies = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | reports.map(lambda r: json.dumps(r).encode())
    | plausible.map(lambda r: json.dumps(r).encode())
)
header_names = st.sampled_from(
    [
        "content-type",
        "content-length",
        "x-arr-clientcert",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-functions-key",
        "transfer-encoding",
    ]
) | st.text(min_size=1, max_size=20)
header_values = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", GOOD_CERT, ROGUE_CERT, "v1,Zm9v", "0"]
) | st.text(max_size=60)


# Hypothesis draws each branch of one_of about equally: two POST branches put about half of the
# examples past the method check, where the other layers can be reached.
methods = st.one_of(
    st.just("POST"),
    st.just("POST"),
    st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "post"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10),
)
known_headers = st.fixed_dictionaries(
    {},
    optional={
        "content-type": st.sampled_from(["application/json", "text/plain"]) | st.text(max_size=30),
        "x-arr-clientcert": header_values,
        "webhook-id": st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True) | st.text(max_size=70),
        "webhook-timestamp": st.integers(0, 2**40).map(str) | st.text(max_size=20),
        "webhook-signature": header_values,
    },
)
anything = st.tuples(
    methods,
    st.tuples(known_headers, st.dictionaries(header_names, header_values, max_size=4)).map(
        lambda pair: {**pair[1], **pair[0]}
    ),
    bodies,
)
# POSTs carrying genuine credentials (a certificate only, or both proofs), so the generated JSON
# gets past authentication into validation, the device check, the rate limit, mapping and Graph.
authenticated = st.tuples(
    st.dictionaries(header_names, header_values, max_size=3),
    bodies,
    st.sampled_from(["both", "both", "both", "certificate"]),
)


def credentials(body: bytes, which: str) -> dict[str, str]:
    """Genuine credentials, made at send time so the timestamp is fresh and the id unused."""
    out = {"content-type": "application/json", "x-arr-clientcert": GOOD_CERT}
    if which == "both":
        msg_id, now = f"fuzz_{uuid.uuid4().hex}", datetime.now(UTC)
        try:
            signature = Webhook(SECRET).sign(msg_id, now, body.decode())
        except UnicodeDecodeError:
            signature = "v1,Zm9v"
        out |= {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }
    return out


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    """Bound but never listening: connections are refused and nothing can leave the machine."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture(scope="module")
def bridge_env(
    identity_emulator: Emulator,
    closed_port: int,
    monkeypatch_module: pytest.MonkeyPatch,
    storage_view: StorageView,
) -> Iterator[None]:
    """The process-wide bridge that `function_app` reaches, configured for both device proofs."""
    env = {
        "GRAPH_BASE_URL": f"http://127.0.0.1:{closed_port}/beta",
        "IDENTITY_ENDPOINT": f"{identity_emulator.url}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "BRIDGE_DELIVERY_MODE": "sync",
        "BRIDGE_SYNC_ATTEMPTS": "1",
        "BRIDGE_AUTH_MODE": "certificate,hmac",
        "BRIDGE_TRUSTED_CA_CERTS": trusted().bundle_pem,
        "BRIDGE_HMAC_SECRETS": SECRET,
        "AzureWebJobsStorage": storage_view.connection_string,
    }
    for name, value in env.items():
        monkeypatch_module.setenv(name, value)
    monkeypatch_module.setattr(runtime, "_bridge", None)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def send(method: str, headers: dict[str, str], body: bytes) -> func.HttpResponse:
    return HANDLER(
        func.HttpRequest(
            method=method,
            url="http://127.0.0.1/api/v1/compliance-script-results",
            headers=headers,
            params={},
            route_params={},
            body=body,
        )
    )


def check(response: func.HttpResponse) -> int:
    """The contract under fire: a planned status, and problem+json for every error."""
    status = response.status_code
    assert status < 500 or status in GRAPH_OUTCOMES, response.get_body()
    if status >= 400:
        assert response.mimetype == "application/problem+json"
        problem: dict[str, Any] = json.loads(response.get_body())
        assert problem["status"] == status
        assert problem["type"].startswith("urn:intune-compliance-bridge:problem:")
        assert problem["title"] and problem["detail"]
        if status in GRAPH_OUTCOMES:
            # Graph unreachable; or the pair's lease kept after a write that may still land, or
            # the budget: all are "send it again later".
            assert problem["reason"] in {
                "connection_error",
                "token_unavailable",
                "timeout",
                "busy",
                "budget",
                "throttled",
            }
    return status


FUZZ = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_arbitrary_requests_get_a_planned_status_and_problem_json(bridge_env: None) -> None:
    seen: Counter[int] = Counter()

    @FUZZ
    @given(request=anything)
    def hostile(request: tuple[str, dict[str, str], bytes]) -> None:
        seen[check(send(*request))] += 1

    hostile()
    assert seen.total() >= 1000
    for status in (400, 401, 405, 415):  # the generator reaches each early stage
        assert seen[status], f"no generated request ended in {status}: {dict(seen)}"


def test_arbitrary_json_behind_genuine_credentials_never_breaks_the_bridge(
    bridge_env: None,
) -> None:
    seen: Counter[int] = Counter()

    @FUZZ
    @given(request=authenticated)
    def hostile(request: tuple[dict[str, str], bytes, str]) -> None:
        headers, body, which = request
        seen[check(send("POST", {**headers, **credentials(body, which)}, body))] += 1

    hostile()
    assert seen.total() >= 1000
    for status in (401, 403, 422, 503):  # refused, wrong device, invalid, and sent to Graph
        assert seen[status], f"no generated request ended in {status}: {dict(seen)}"
