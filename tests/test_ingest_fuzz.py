"""Hostile input, generated: whatever arrives at the ingest function, the answer is a deliberate
status with problem+json for errors, never an unhandled exception and never a 5xx of the bridge's
own making: no example may reach ingest's last-resort handler. Runs in process through
`function_app`, in sync mode (Graph on a port that refuses connections) and in queue mode (Azurite).
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
from devstack.azurite import Azurite
from shared import runtime
from shared.settings import get_settings
from tests.certs import TENANT, header, tenant_extension, trusted, untrusted
from tests.conftest import IDENTITY_HEADER
from tests.stack import CLIENT_ID, SCRIPT, Emulator, StorageView

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
FUZZ_DEVICE = str(uuid.uuid4())  # its own device, so its rate-limit bucket is its own too
OTHER_DEVICE = str(uuid.uuid4())  # what the certificate must never be allowed to write
GOOD_CERT = header(trusted().leaf(FUZZ_DEVICE, tenant_id=TENANT))
GOOD_DER = base64.b64decode(GOOD_CERT)
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
# Every year, every offset to ±23:59 (the UTC instant may not exist), other scripts' digits.
offsets = st.sampled_from(["Z", "z", "", "+24:00"]) | st.builds(
    lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
    st.sampled_from("+-"),
    st.integers(0, 23),
    st.integers(0, 59),
)
extreme_timestamps = st.builds(
    lambda y, rest, zone: f"{y:04d}-{rest}{zone}",
    st.integers(1, 9999) | st.sampled_from([1, 999, 1999, 2000, 9999]),
    st.sampled_from(["01-01T00:30:00", "12-31T23:59:59", "11-28T10:00:02.123456789012"]),
    offsets,
)
foreign_digits = st.builds(
    lambda base, zero: "".join(chr(ord(c) - 48 + zero) if c.isdigit() else c for c in base),
    st.just("2026-11-28T10:00:02Z"),
    st.sampled_from([0xFF10, 0x0660, 0x06F0, 0x0966]),
)
timestamps = (
    st.sampled_from(
        ["2026-11-28T10:00:02Z", "2026-11-28T10:00:02", "2099-01-01T00:00:00Z", "yesterday"]
    )
    | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
    | extreme_timestamps
    | foreign_digits
    | extreme_timestamps.map(lambda t: f" {t}\n")
)
# Script output a device controls: up to the Intune cap, nested deeper than any parser recurses,
# with control characters, NaN and duplicate keys.
deep_stdout = st.builds(
    lambda n, opener, tail: opener * n + tail,
    st.integers(1, 120_000),
    st.sampled_from(
        ["[", '{"a":', "[{}", '{"a":['],
    ),
    st.sampled_from(["", "]", "1}", "null"]),
)
control_text = st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=200)
stdouts = (
    st.text(max_size=80)
    | json_values.map(json.dumps)
    | deep_stdout
    | control_text
    | st.sampled_from(['{"a": NaN}', '{"a": 1, "a": 2}', '{"a": Infinity}'])
    | st.integers(0, 1_048_700).map(lambda n: '{"x":"' + "y" * n + '"}')
)
executions = st.fixed_dictionaries(
    {"finishedAt": timestamps},
    optional={
        "exitCode": st.none() | st.integers() | st.text(max_size=3),
        "stdout": stdouts,
        "stderr": st.text(max_size=40) | control_text,
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
                "stdout": stdouts,
                "stderr": st.text(max_size=80) | control_text,
                "timedOut": st.booleans(),
                "startedAt": timestamps,
            },
        ),
    },
    optional={
        "reportId": st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
        "nextRunAt": timestamps,
        "lastSyncAt": timestamps,
    },
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
# The device certificate with bytes replaced, inserted or cut: duplicated extensions, unknown
# versions, bad lengths, a spoiled tenant extension.
mutated_der = st.builds(
    lambda at, new, cut: GOOD_DER[:at] + new + GOOD_DER[at + cut :],
    st.integers(0, len(GOOD_DER) - 1),
    st.binary(max_size=4) | st.sampled_from([bytes.fromhex("a003020105"), b"\x06\x03\x55\x1d\x0f"]),
    st.integers(0, 5),
).map(lambda der: base64.b64encode(der).decode())


def _respelled(old: str, new: str) -> str:
    """GOOD_DER with one field re-encoded in place (the signature no longer matches, but the
    parse must refuse it before any signature is checked)."""
    at = GOOD_DER.find(bytes.fromhex(old))
    assert at > 0, old
    der = GOOD_DER[:at] + bytes.fromhex(new) + GOOD_DER[at + len(old) // 2 :]
    return base64.b64encode(der).decode()


# Field-level mutations a random splice would almost never hit: unknown versions, duplicated
# extensions (basicConstraints or the EKU renamed keyUsage), the tenant extension renamed.
structural_der = st.sampled_from(
    [
        _respelled("a003020102", "a003020105"),
        _respelled("a003020102", "a0030201ff"),
        _respelled("0603551d13", "0603551d0f"),
        _respelled("0603551d25", "0603551d0f"),
        _respelled("06082a864886f714050e", "06082a864886f7140506"),
    ]
)
certificates = (
    structural_der
    | st.sampled_from(
        [
            GOOD_CERT,
            ROGUE_CERT,
            header(trusted().leaf(FUZZ_DEVICE)),  # no tenant
            header(trusted().leaf(FUZZ_DEVICE, tenant_value=tenant_extension(TENANT)[:17])),
            header(trusted().leaf(FUZZ_DEVICE, tenant_id=str(uuid.uuid4()))),
        ]
    )
    | mutated_der
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        'application/json; charset="UTF-8"; foo=bar',
        "application/json;charset=latin-1",
        "application/json; charset",
        'application/json; charset="',
        "application/jsonx",
        "APPLICATION/JSON",
    ]
) | st.text(max_size=40)
# Other scripts' digits, signs, spaces, and lengths over the limit up to 5,000 digits (hypothesis
# favours small integers, so over-limit values are drawn on their own too).
content_lengths = (
    st.sampled_from(["\u00b2", "\u0663", "9" * 5000, "-1", " 12", "+3", "1e3"])
    | st.integers(2 * 1024 * 1024 + 1, 10**30).map(str)
    | st.integers(0, 2**70).map(str)
)
signatures = st.sampled_from(
    ["v1,Zm9v", "v1,", "v1,a,b", "v2,Zm9v", "v1,Zm9v  v1,Zm9v"]
) | st.lists(
    st.builds(lambda v, b: f"v{v},{b}", st.integers(0, 1000), st.text(max_size=50)), max_size=6
).map(" ".join)
header_values = (
    st.sampled_from(["0"])
    | content_types
    | certificates
    | signatures
    | content_lengths
    | st.text(max_size=60)
)


# Hypothesis draws each branch of one_of about equally: two POST branches put about half of the
# examples past the method check, where the other layers can be reached.
methods = st.one_of(
    st.just("POST"),
    st.just("POST"),
    st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "post"]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10),
)
known_headers = st.fixed_dictionaries(
    # A third well-typed, so many examples get past the media type check; "" stands for none.
    {"content-type": st.one_of(st.just("application/json"), content_types, st.just(""))},
    optional={
        "content-length": content_lengths,
        "x-arr-clientcert": certificates | header_values,
        "webhook-id": st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True) | st.text(max_size=70),
        "webhook-timestamp": st.integers(0, 2**40).map(str) | st.text(max_size=20),
        "webhook-signature": signatures | header_values,
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
    out["content-length"] = str(len(body))
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


@pytest.fixture(scope="module", params=["sync", "queue"])
def bridge_env(
    request: pytest.FixtureRequest,
    identity_emulator: Emulator,
    closed_port: int,
    monkeypatch_module: pytest.MonkeyPatch,
    azurite_server: Azurite,
) -> Iterator[str]:
    """The process-wide bridge that `function_app` reaches, configured for both device proofs
    and a pinned tenant, in sync or queue mode."""
    mode = request.param
    if mode == "queue":
        StorageView(azurite_server.connection_string).clear()
    env = {
        "GRAPH_BASE_URL": f"http://127.0.0.1:{closed_port}/beta",
        "IDENTITY_ENDPOINT": f"{identity_emulator.url}/msi/token",
        "IDENTITY_HEADER": IDENTITY_HEADER,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "BRIDGE_DELIVERY_MODE": mode,
        "AzureWebJobsStorage": azurite_server.connection_string,
        "BRIDGE_SYNC_ATTEMPTS": "1",
        "BRIDGE_TENANT_ID": TENANT,
        # Off, so every generated report that validates also reaches mapping and storage.
        "BRIDGE_DEVICE_RATE_LIMIT": "0",
        "BRIDGE_AUTH_MODE": "certificate,hmac",
        "BRIDGE_TRUSTED_CA_CERTS": trusted().bundle_pem,
        "BRIDGE_HMAC_SECRETS": SECRET,
    }
    for name, value in env.items():
        monkeypatch_module.setenv(name, value)
    monkeypatch_module.setattr(runtime, "_bridge", None)
    get_settings.cache_clear()
    yield mode
    monkeypatch_module.setattr(runtime, "_bridge", None)
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
    if status >= 400:
        assert response.mimetype == "application/problem+json"
        problem: dict[str, Any] = json.loads(response.get_body())
        assert not problem["type"].endswith(":internal-error"), problem  # the last resort
    assert status < 500 or status in GRAPH_OUTCOMES, response.get_body()
    if status >= 400:
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


# Bounded so the whole file stays within about a minute on a 2-core machine; sync mode paces its
# Graph calls to BRIDGE_GRAPH_WRITES_PER_SECOND, so examples that reach Graph cost the most there.
EXAMPLES = {"sync": 1000, "queue": 500}
HOSTILE_EXAMPLES = {"sync": 300, "queue": 500}


def fuzz(mode: str, examples: dict[str, int] = EXAMPLES) -> Any:
    return settings(
        max_examples=examples[mode],
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


def test_arbitrary_requests_get_a_planned_status_and_problem_json(bridge_env: str) -> None:
    seen: Counter[int] = Counter()

    @fuzz(bridge_env)
    @given(request=anything)
    def hostile(request: tuple[str, dict[str, str], bytes]) -> None:
        seen[check(send(*request))] += 1

    hostile()
    assert seen.total() >= EXAMPLES[bridge_env]
    for status in (400, 401, 405, 413, 415):  # the generator reaches each early stage
        assert seen[status], f"no generated request ended in {status}: {dict(seen)}"


def test_arbitrary_json_behind_genuine_credentials_never_breaks_the_bridge(
    bridge_env: str,
) -> None:
    seen: Counter[int] = Counter()

    @fuzz(bridge_env)
    @given(request=authenticated)
    def hostile(request: tuple[dict[str, str], bytes, str]) -> None:
        headers, body, which = request
        seen[check(send("POST", {**headers, **credentials(body, which)}, body))] += 1

    hostile()
    assert seen.total() >= EXAMPLES[bridge_env]
    # refused, wrong device, invalid, and sent to Graph (sync) or stored (queue)
    reached = 503 if bridge_env == "sync" else 202
    for status in (401, 403, 422, reached):
        assert seen[status], f"no generated request ended in {status}: {dict(seen)}"


# Every field a defect of issue 11 lived in, drawn from its hostile generator on every example.
hostile_timestamps = extreme_timestamps | foreign_digits
hostile_reports = st.fixed_dictionaries(
    {
        "deviceId": st.just(FUZZ_DEVICE),
        "scriptId": st.just(SCRIPT),
        "execution": st.fixed_dictionaries(
            {"finishedAt": hostile_timestamps | past, "stdout": stdouts, "exitCode": st.just(0)},
            optional={
                "startedAt": hostile_timestamps,
                "stderr": control_text,
                "timedOut": st.booleans(),
            },
        ),
    },
    optional={"nextRunAt": hostile_timestamps, "lastSyncAt": hostile_timestamps},
)


def test_hostile_fields_and_certificates_get_planned_answers_and_never_freeze_a_pair(
    bridge_env: str,
) -> None:
    """Each example on a device of its own: whatever the hostile report did, a genuine report of
    a moment ago is never answered `stale` (a year-999 version used to freeze the pair where
    versions are stored: queue mode)."""
    seen: Counter[int] = Counter()

    @fuzz(bridge_env, HOSTILE_EXAMPLES)
    @given(report=hostile_reports, cert=certificates, signature=signatures)
    def hostile(report: dict[str, Any], cert: str, signature: str) -> None:
        device = str(uuid.uuid4())
        own = {"x-arr-clientcert": header(trusted().leaf(device, tenant_id=TENANT))}
        body = json.dumps({**report, "deviceId": device}).encode()
        genuine = {**credentials(body, "both"), **own}
        seen[check(send("POST", genuine, body))] += 1
        seen[check(send("POST", {**genuine, "x-arr-clientcert": cert}, body))] += 1
        seen[check(send("POST", {**genuine, "webhook-signature": signature}, body))] += 1
        if bridge_env != "queue":
            return
        moment_ago = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        later = {"deviceId": device, "scriptId": SCRIPT, "execution": {"finishedAt": moment_ago}}
        later_body = json.dumps(later).encode()
        answer = send("POST", {**credentials(later_body, "both"), **own}, later_body)
        check(answer)
        assert json.loads(answer.get_body()).get("reason") != "stale", answer.get_body()

    hostile()
    assert seen[422] and seen[401], dict(seen)
