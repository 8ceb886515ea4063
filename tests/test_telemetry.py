"""Telemetry: every outcome's event with its dimensions, under the contract's names, with metrics.

The events are captured three ways: as Python log records (what the bridge hands to logging), as
OpenTelemetry log records through the same `LoggingHandler` the Azure Monitor distro attaches, and
as the Application Insights envelopes the distro's exporter would send (customEvents name and
customDimensions). Metrics are read with the SDK's in-memory reader.
"""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from shared import runtime, telemetry
from shared.api import ingest
from shared.runtime import Bridge, on_queue_message
from shared.settings import Settings
from tests.certs import header, trusted, untrusted
from tests.conftest import IDENTITY_HEADER
from tests.stack import CLIENT_ID, ROOT, SCRIPT, Emulator, StorageView, report_body
from tests.test_log_hygiene import SECRET, assert_clean, forbidden, record_text, scenarios, sign

CONTRACT = json.loads((ROOT / "infra" / "telemetry-contract.json").read_text())
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
OUTPUT_MARKER = "SCRIPT-OUTPUT-MARKER-7f3a"
JSON = {"Content-Type": "application/json"}


# --- capture -------------------------------------------------------------------------------------


@dataclass
class Event:
    name: str
    dims: dict[str, Any]
    record: logging.LogRecord


class Capture(logging.Handler):
    """Every record of the `bridge` logger, plus the OpenTelemetry view of the same records."""

    def __init__(self, logs: InMemoryLogRecordExporter, reader: InMemoryMetricReader) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logs = logs
        self.reader = reader

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str | None = None) -> list[Event]:
        out = []
        for record in self.records:
            attrs = vars(record)
            if telemetry.CUSTOM_EVENT not in attrs:
                continue
            dims = {k: v for k, v in attrs.items() if k not in _STANDARD}
            event = dims.pop(telemetry.CUSTOM_EVENT)
            if name is None or event == name:
                out.append(Event(event, dims, record))
        return out

    def one(self, name: str, **match: Any) -> Event:
        found = [e for e in self.events(name) if all(e.dims.get(k) == v for k, v in match.items())]
        assert len(found) == 1, f"{name} {match}: {[e.dims for e in self.events(name)]}"
        return found[0]

    def metric_points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points: list[Any] = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


@pytest.fixture
def capture() -> Iterator[Capture]:
    bridge_logger = logging.getLogger("bridge")
    logs = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    otel = LoggingHandler(logger_provider=provider)
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    telemetry.use_meter_provider(meters)
    handler = Capture(logs, reader)
    bridge_logger.addHandler(handler)
    bridge_logger.addHandler(otel)
    yield handler
    bridge_logger.removeHandler(handler)
    bridge_logger.removeHandler(otel)
    telemetry.use_meter_provider(None)
    provider.shutdown()
    meters.shutdown()


def assert_in_contract(capture: Capture) -> None:
    events = capture.events()
    assert events, "nothing was emitted: the test would prove nothing"
    for event in events:
        assert event.name in CONTRACT["events"], event.name
        unknown = set(event.dims) - set(CONTRACT["dimensions"])
        assert not unknown, f"{event.name} carries {unknown}, which the contract does not name"
    assert not [r for r in capture.records if "not in infra/telemetry-contract.json" in r.msg]


# --- the bridges ---------------------------------------------------------------------------------


def version(minutes_ago: float, report_id: str, device: str, **execution: Any) -> dict[str, Any]:
    finished = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    body = report_body(deviceId=device, reportId=report_id)
    body["execution"] = {
        "exitCode": 0,
        "stdout": json.dumps({"marker": OUTPUT_MARKER}),
        "finishedAt": finished.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        **execution,
    }
    return body


def post(bridge: Bridge, body: Any, headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ingest("POST", headers or JSON, data, bridge=bridge)


@pytest.fixture
def identity_env(emulators: tuple[Emulator, Emulator], monkeypatch: pytest.MonkeyPatch) -> None:
    _, identity = emulators
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{identity.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)


@pytest.fixture
def queue_bridge(
    emulators: tuple[Emulator, Emulator],
    identity_env: None,
    storage: StorageView,
    monkeypatch: pytest.MonkeyPatch,
) -> Bridge:
    """A real bridge in this process in queue mode, and the queue trigger's process-wide one."""
    graph, _ = emulators
    settings = Settings.model_validate(
        {
            "GRAPH_BASE_URL": f"{graph.url}/beta",
            "AZURE_CLIENT_ID": CLIENT_ID,
            "BRIDGE_DELIVERY_MODE": "queue",
            "AzureWebJobsStorage": storage.connection_string,
            "BRIDGE_DEVICE_RATE_LIMIT": "0",
            # Every version is written: these tests follow outcomes, not change-only writes.
            "BRIDGE_REFRESH_INTERVAL": "0",
        }
    )
    bridge = Bridge.from_settings(settings)
    monkeypatch.setattr(runtime, "_bridge", bridge)
    return bridge


def deliver_next(bridge: Bridge) -> str:
    """Run the queue trigger on the next visible message, as the host would."""
    queue = bridge.storage.queue("graph")
    message = next(iter(queue.receive_messages(max_messages=1)))
    [outcome] = on_queue_message("graph", message.content, message.dequeue_count)
    queue.delete_message(message)
    return outcome.outcome


def secure_bridge(
    emulators: tuple[Emulator, Emulator], storage: StorageView, **settings: str
) -> Bridge:
    """Sync mode, certificate and HMAC required (the log-hygiene scenarios' bridge)."""
    graph, _ = emulators
    return Bridge.from_settings(
        Settings.model_validate(
            {
                "GRAPH_BASE_URL": f"{graph.url}/beta",
                "AZURE_CLIENT_ID": CLIENT_ID,
                "BRIDGE_DELIVERY_MODE": "sync",
                "BRIDGE_AUTH_MODE": "certificate,hmac",
                "BRIDGE_TRUSTED_CA_CERTS": trusted().bundle_pem,
                "BRIDGE_HMAC_SECRETS": SECRET,
                "BRIDGE_DEVICE_RATE_LIMIT": "0",
                "AzureWebJobsStorage": storage.connection_string,
                **settings,
            }
        )
    )


def signed(body: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    data = json.dumps(body).encode()
    cert = header(trusted().leaf(body["deviceId"]))
    return {**JSON, "X-ARR-ClientCert": cert, **sign(data)}, data


# --- every outcome ------------------------------------------------------------------------------


def test_each_outcome_emits_its_event_with_its_dimensions_and_metrics(
    queue_bridge: Bridge, emulators: tuple[Emulator, Emulator], capture: Capture
) -> None:
    graph, _ = emulators
    device = str(uuid.uuid4())
    ids = [f"tel-{n}-{uuid.uuid4().hex[:8]}" for n in range(3)]

    # accepted, then the same report again: ignored (duplicate)
    first = version(10, ids[0], device)
    assert post(queue_bridge, first).status == 202
    assert post(queue_bridge, first).status == 200
    accepted = capture.one("accepted", reportId=ids[0])
    assert accepted.dims == {
        "reportId": ids[0],
        "scriptId": SCRIPT,
        "deviceId": device,
        "detectionState": "success",
        "outcome": "accepted",
    }
    ignored = capture.one("ignored", reportId=ids[0])
    assert ignored.dims["reason"] == "duplicate"
    assert ignored.dims["outcome"] == "ignored"

    # delivered: the queue trigger's event carries the same report id and Graph's correlation ids
    assert deliver_next(queue_bridge) == "delivered"
    delivered = capture.one("delivered", reportId=ids[0])
    [patch] = [r for r in graph.requests() if r["method"] == "PATCH"]
    assert delivered.dims["clientRequestId"] == patch["client_request_id"]
    assert delivered.dims["graphRequestId"] == patch["request_id"]
    assert delivered.dims["graphStatus"] == 200
    assert delivered.dims["attempt"] == 1
    assert delivered.dims["dequeueCount"] == 1
    assert delivered.dims["detectionState"] == "success"
    assert delivered.dims["reason"] == "delivered"
    assert delivered.dims["latencyMs"] >= 0
    assert 0 <= delivered.dims["ageMs"] < 60_000
    assert (delivered.dims["scriptId"], delivered.dims["deviceId"]) == (SCRIPT, device)

    # retried: Graph answers 503 with Retry-After once
    graph.post("faults", [{"status": 503, "retryAfter": "7", "count": 1}])
    assert post(queue_bridge, version(5, ids[1], device)).status == 202
    assert deliver_next(queue_bridge) == "retried"
    retried = capture.one("retried", reportId=ids[1])
    assert retried.dims["reason"] == "server_error"
    assert retried.dims["graphStatus"] == 503
    assert retried.dims["retryDelayMs"] == 7000
    assert retried.dims["attempt"] == 1
    assert retried.dims["graphRequestId"] and retried.dims["clientRequestId"]

    # poisoned: Graph refuses the route itself
    graph.post(
        "faults",
        [{"status": 400, "code": "No method match route template", "match": "deviceRunStates"}],
    )
    assert post(queue_bridge, version(1, ids[2], device)).status == 202
    assert deliver_next(queue_bridge) == "poisoned"
    poisoned = capture.one("poisoned", reportId=ids[2])
    assert poisoned.dims["reason"] == "endpoint_unsupported"
    assert poisoned.dims["graphStatus"] == 400
    assert poisoned.record.levelno == logging.WARNING

    # rejected: slugs, never the problem type URL; the HTTP status; how many fields failed
    assert post(queue_bridge, b"{not json").status == 400
    assert capture.one("rejected", reason="invalid-json").dims["status"] == 400
    assert post(queue_bridge, {"deviceId": device}).status == 422
    invalid = capture.one("rejected", reason="invalid-report")
    assert invalid.dims["status"] == 422 and invalid.dims["invalidFields"] >= 1

    # every report id is in every event about it, at ingest and at delivery
    for report_id, outcomes in zip(
        ids,
        [{"accepted", "ignored", "delivered"}, {"accepted", "retried"}, {"accepted", "poisoned"}],
        strict=True,
    ):
        seen = {e.name for e in capture.events() if e.dims.get("reportId") == report_id}
        assert seen == outcomes, report_id
    assert_in_contract(capture)

    # metrics: one count per outcome event, Graph latency per Graph outcome, age per delivery
    counts: dict[str, int] = {}
    for point in capture.metric_points("bridge.reports"):
        counts[point.attributes["outcome"]] = counts.get(point.attributes["outcome"], 0) + int(
            point.value
        )
    assert counts == {
        "accepted": 3,
        "ignored": 1,
        "delivered": 1,
        "retried": 1,
        "poisoned": 1,
        "rejected": 2,
    }
    latency = capture.metric_points("bridge.graph.latency")
    assert sorted(p.attributes["outcome"] for p in latency) == ["delivered", "poisoned", "retried"]
    assert all(p.count == 1 for p in latency)
    age = capture.metric_points("bridge.delivery.age")
    assert sorted(p.attributes["outcome"] for p in age) == ["delivered", "poisoned", "retried"]
    assert all(0 <= p.sum < 60 for p in age), "the age histogram is in seconds"


def test_events_reach_application_insights_under_the_contracts_bare_names(
    queue_bridge: Bridge, capture: Capture
) -> None:
    """The bug this guards: dimensions sent as `bridge.reportId` while the KQL reads `reportId`."""
    from azure.monitor.opentelemetry.exporter.export.logs._exporter import (
        _convert_log_to_envelope,
    )

    report_id = f"tel-ai-{uuid.uuid4().hex[:8]}"
    assert post(queue_bridge, version(3, report_id, str(uuid.uuid4()))).status == 202
    assert deliver_next(queue_bridge) == "delivered"
    records = [
        r for r in capture.logs.get_finished_logs() if r.log_record.attributes.get("reportId")
    ]
    assert len(records) == 2
    for readable in records:
        attributes = dict(readable.log_record.attributes)
        assert not [k for k in attributes if k.startswith("bridge.")]
        envelope = _convert_log_to_envelope(readable)
        assert envelope.name == "Microsoft.ApplicationInsights.Event"
        data = envelope.data.base_data
        assert data.name in ("accepted", "delivered")
        assert data.properties["reportId"] == report_id
        assert data.properties["outcome"] == data.name
        ours = {k for k in data.properties if not k.startswith("code.") and k != "logger_name"}
        assert ours <= set(CONTRACT["dimensions"]), ours - set(CONTRACT["dimensions"])
        # What the workbook's and the alerts' KQL read as customDimensions.<name>.
        for name in ("reportId", "scriptId", "deviceId", "detectionState"):
            assert name in data.properties


def test_auth_refusals_emit_contract_names(
    emulators: tuple[Emulator, Emulator],
    identity_env: None,
    capture: Capture,
    storage: StorageView,
) -> None:
    bridge = secure_bridge(emulators, storage)
    device = str(uuid.uuid4())
    body = report_body(deviceId=device)
    headers, data = signed(body)
    rogue = {**headers, "X-ARR-ClientCert": header(untrusted().leaf(device))}
    assert post(bridge, data, rogue).status == 401
    untrusted_event = capture.one("certificateUntrusted")
    assert set(untrusted_event.dims) == {"reason"}
    assert capture.one("rejected", reason="certificate-untrusted").dims["status"] == 401
    tampered = {**headers, **sign(data + b" ")}
    assert post(bridge, data, tampered).status == 401
    assert capture.one("rejected", reason="signature-invalid").dims["status"] == 401
    assert_in_contract(capture)


# --- secrets and script output -------------------------------------------------------------------


def test_no_secret_and_no_script_output_unless_opted_in(
    emulators: tuple[Emulator, Emulator],
    identity_env: None,
    capture: Capture,
    storage: StorageView,
) -> None:
    bridge = secure_bridge(emulators, storage)
    device = str(uuid.uuid4())
    sent = scenarios(device)
    for _, headers, data in sent:  # an accepted report and every refusal an attacker would try
        ingest("POST", headers, data, bridge=bridge)
    body = version(2, f"tel-out-{uuid.uuid4().hex[:8]}", device)  # its stdout holds the marker
    headers, data = signed(body)
    assert post(bridge, data, headers).status == 200
    assert capture.one("accepted", reportId=body["reportId"])
    assert capture.one("delivered", reportId=body["reportId"])
    secrets = forbidden([headers for _, headers, _ in sent] + [headers])
    for record in capture.records:
        text = record_text(record)
        assert OUTPUT_MARKER not in text, "script output reached telemetry without the opt-in"
        assert_clean(text, secrets, f"telemetry record {record.getMessage()[:40]}")
    for readable in capture.logs.get_finished_logs():
        attributes = json.dumps(dict(readable.log_record.attributes), default=str)
        assert OUTPUT_MARKER not in attributes
        assert "scriptOutput" not in readable.log_record.attributes
        assert_clean(attributes + str(readable.log_record.body), secrets, "an OpenTelemetry log")
    assert_in_contract(capture)


def test_script_output_opt_in_attaches_the_mapped_output_capped(
    emulators: tuple[Emulator, Emulator],
    identity_env: None,
    capture: Capture,
    storage: StorageView,
) -> None:
    bridge = secure_bridge(emulators, storage, BRIDGE_TELEMETRY_SCRIPT_OUTPUT="true")
    device = str(uuid.uuid4())
    short = version(3, f"tel-s-{uuid.uuid4().hex[:8]}", device)
    long_output = json.dumps({"marker": OUTPUT_MARKER, "pad": "x" * 20_000})
    long = version(1, f"tel-l-{uuid.uuid4().hex[:8]}", device, stdout=long_output)
    sent = []
    for body in (short, long):
        headers, data = signed(body)
        sent.append(headers)
        assert post(bridge, data, headers).status == 200
    output = capture.one("accepted", reportId=short["reportId"]).dims["scriptOutput"]
    assert output == short["execution"]["stdout"]
    capped = capture.one("accepted", reportId=long["reportId"])
    assert len(capped.dims["scriptOutput"]) == telemetry.SCRIPT_OUTPUT_LIMIT
    assert capped.dims["scriptOutput"].startswith('{"marker": "' + OUTPUT_MARKER)
    assert capped.dims["scriptOutput"].endswith(telemetry.TRUNCATED)
    # Only on `accepted`, and never in the one-line message.
    assert OUTPUT_MARKER not in capped.record.getMessage()
    delivered = capture.one("delivered", reportId=long["reportId"])
    assert "scriptOutput" not in delivered.dims
    secrets = forbidden(sent)
    for record in capture.records:
        assert_clean(record_text(record), secrets, "a telemetry record")
    assert_in_contract(capture)


# --- the contract and the code ------------------------------------------------------------------


def test_the_code_and_the_contract_name_the_same_things() -> None:
    assert list(telemetry.EVENTS) == CONTRACT["events"]
    assert list(telemetry.DIMENSIONS) == CONTRACT["dimensions"]
    metrics = {m["name"]: m for m in CONTRACT["metrics"]}
    assert set(telemetry.METRICS) == set(metrics)
    for metric in metrics.values():
        assert metric["type"] in ("counter", "histogram")
        # In Application Insights a metric's attributes are its customDimensions.
        assert set(metric["attributes"]) <= set(CONTRACT["dimensions"])


def _emit_calls() -> Iterator[tuple[str, ast.Call, dict[str, set[str]]]]:
    for path in sorted((ROOT / "shared").rglob("*.py")):
        if path.name == "telemetry.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        dicts: dict[str, set[str]] = {}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Dict)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                keys = {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
                dicts.setdefault(node.targets[0].id, set()).update(keys)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (
                (isinstance(node.func, ast.Name) and node.func.id == "emit")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "emit")
            ):
                yield path.name, node, dicts


def test_every_emit_call_site_uses_contract_names() -> None:
    """Static: the event names and dimension keys written at each `emit(` in shared/."""
    sites = list(_emit_calls())
    assert len(sites) >= 8, "the call sites were not found: the test would prove nothing"
    dynamic = []
    for where, call, dicts in sites:
        event = call.args[0]
        if isinstance(event, ast.Constant):
            assert event.value in CONTRACT["events"], f"{where}:{call.lineno} {event.value}"
        else:
            dynamic.append(ast.unparse(event))
        for keyword in call.keywords:
            if keyword.arg == "level":
                continue
            names = {keyword.arg} if keyword.arg else dicts.get(ast.unparse(keyword.value))
            assert names, f"{where}:{call.lineno}: cannot resolve **{ast.unparse(keyword.value)}"
            unknown = names - set(CONTRACT["dimensions"])
            assert not unknown, f"{where}:{call.lineno} emits {unknown}"
    # Delivery emits `outcome.outcome`: every QueueOutcome is built with a contract name.
    assert dynamic == ["outcome.outcome"]
    tree = ast.parse((ROOT / "shared" / "delivery.py").read_text())
    built = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "QueueOutcome"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    assert built and built <= set(CONTRACT["events"]), built


def test_names_outside_the_contract_are_dropped_with_a_warning(capture: Capture) -> None:
    telemetry.emit("accepted", reportId="r-1", notInContract=1, **{"bridge.reportId": "x"})
    [event] = capture.events("accepted")
    assert event.dims == {"reportId": "r-1", "outcome": "accepted"}
    warnings = [r.getMessage() for r in capture.records if r.levelno == logging.WARNING]
    assert any("notInContract" in w for w in warnings)


def test_client_text_is_neutralised_and_metrics_never_fail_a_report(capture: Capture) -> None:
    telemetry.use_meter_provider(object())  # get_meter raises: the event must still go out
    telemetry.emit("rejected", reason="x\r\nforged: line", reportId="y" * 400, status=400)
    [event] = capture.events("rejected")
    assert "\n" not in event.dims["reason"] and "\r" not in event.dims["reason"]
    assert len(event.dims["reportId"]) < 300
    assert "\n" not in event.record.getMessage()


def test_age_is_read_from_the_queue_messages_accepted_at() -> None:
    now = datetime(2026, 11, 28, 10, 0, 5, tzinfo=UTC)
    assert telemetry.age_ms("2026-11-28T10:00:00.000000Z", now) == 5000.0
    assert telemetry.age_ms("not a time", now) is None
    assert telemetry.age_ms(None, now) is None


def test_function_app_import_loads_no_opentelemetry_and_no_azure_monitor() -> None:
    """Cold start: the distro is the worker's to load; the metrics API loads on the first event."""
    code = (
        "import json, sys, function_app; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.startswith(('opentelemetry', 'azure.monitor')))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []


def test_host_and_requirements_select_opentelemetry() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("azure-monitor-opentelemetry") for line in requirements)
