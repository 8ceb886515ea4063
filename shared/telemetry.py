"""Telemetry for Application Insights: one custom event per outcome, and OpenTelemetry metrics.

Events are log records on the `bridge` logger that carry `microsoft.custom_event.name`. The Azure
Monitor OpenTelemetry distro, which the Functions Python worker configures itself when
`PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true` (the bridge never calls
`configure_azure_monitor()`), sends each one as a `customEvents` row whose customDimensions are the
record's extra attributes, under exactly the names in `infra/telemetry-contract.json` (which the
KQL in `infra/queries` uses). The report id is the correlation id: every event about a report, at
ingest and at delivery, carries `reportId`, and Graph's `client-request-id` and `request-id` travel
with it. Metrics use the OpenTelemetry metrics API only, imported on the first event rather than
at cold start; without a configured meter provider they cost nothing.

Client text is neutralised before it is logged, and script output is never sent unless
`BRIDGE_TELEMETRY_SCRIPT_OUTPUT` opts in (then it rides on the `accepted` event, capped).
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import UTC, datetime
from typing import Any

from shared import timestamps

__all__ = [
    "CUSTOM_EVENT",
    "DIMENSIONS",
    "EVENTS",
    "METRICS",
    "OUTCOMES",
    "SCRIPT_OUTPUT_LIMIT",
    "age_ms",
    "cap_script_output",
    "clean",
    "emit",
    "script_output",
    "use_meter_provider",
]

logger = logging.getLogger("bridge")
if logger.level == logging.NOTSET:
    # The root logger defaults to WARNING; outcome events are INFO and must still reach the
    # exporter the worker attaches to the root logger.
    logger.setLevel(logging.INFO)

CUSTOM_EVENT = "microsoft.custom_event.name"

# The names below are infra/telemetry-contract.json's (tests/test_telemetry.py keeps them equal).
OUTCOMES = ("accepted", "delivered", "ignored", "retried", "rejected", "poisoned")
# Diagnostics beside the outcomes: why a client certificate did not chain (the `rejected` event
# that follows carries the outcome), a certificate accepted although it names no tenant while
# BRIDGE_TENANT_ID is set, and `error`: ingest's last resort answered a fault of the bridge's own.
EVENTS = (*OUTCOMES, "certificateUntrusted", "certificateWithoutTenant", "error")
DIMENSIONS = (
    "reportId",
    "scriptId",
    "deviceId",
    "detectionState",
    "outcome",
    "reason",
    "attempt",
    "graphStatus",
    "graphRequestId",
    "latencyMs",
    "status",
    "clientRequestId",
    "dequeueCount",
    "retryDelayMs",
    "ageMs",
    "invalidFields",
    "scriptOutput",
    "destination",
    "agentVersion",
)
METRIC_REPORTS = "bridge.reports"
METRIC_GRAPH_LATENCY = "bridge.graph.latency"
METRIC_DELIVERY_AGE = "bridge.delivery.age"
METRICS = (METRIC_REPORTS, METRIC_GRAPH_LATENCY, METRIC_DELIVERY_AGE)

# Application Insights keeps at most 8192 characters of a custom dimension.
SCRIPT_OUTPUT_LIMIT = 8192
TRUNCATED = "...[truncated]"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Script output may span lines; other control characters are still neutralised.
_OUTPUT_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_MAX_LOGGED = 256
_DIMENSION_SET = frozenset(DIMENSIONS)
_EVENT_SET = frozenset(EVENTS)
# Kept out of the one-line message (they are dimensions only).
_NOT_SUMMARISED = frozenset({"scriptOutput"})
_LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 15000, 30000)
_AGE_BUCKETS_S = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 14400, 28800, 86400)


def clean(value: object) -> str:
    """No CR/LF or control characters from a client reaches a log line; long values are cut."""
    text = _CONTROL.sub("?", str(value))
    return text if len(text) <= _MAX_LOGGED else text[:_MAX_LOGGED] + "..."


def cap_script_output(text: str, limit: int = SCRIPT_OUTPUT_LIMIT) -> str:
    """Script output as a dimension: control characters (bar newline and tab) neutralised, capped
    at `limit` characters including a visible truncation marker."""
    text = _OUTPUT_CONTROL.sub("?", text)
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


def script_output(text: str | None, enabled: bool) -> str | None:
    """The mapped scriptOutput for the `accepted` event, only when the setting opts in."""
    return cap_script_output(text) if enabled and text is not None else None


def age_ms(accepted_at: object, now: datetime | None = None) -> float | None:
    """Milliseconds since the bridge accepted a report (its queue message's `acceptedAt`)."""
    if not isinstance(accepted_at, str):
        return None
    try:
        accepted = timestamps.from_version(accepted_at)
    except ValueError:
        return None
    return round(((now or datetime.now(UTC)) - accepted).total_seconds() * 1000, 1)


def _value(key: str, value: Any) -> Any:
    if key == "scriptOutput":
        return cap_script_output(str(value))
    if isinstance(value, bool | int | float):
        return value
    return clean(value)


_warned: set[str] = set()


def _off_contract(kind: str, name: str) -> None:
    """A name outside the contract is a bug: say so once, never fail the request for it."""
    if name not in _warned:
        _warned.add(name)
        logger.warning("telemetry %s %s is not in infra/telemetry-contract.json", kind, clean(name))


def emit(event: str, level: int = logging.INFO, **dimensions: Any) -> None:
    """One custom event (`customEvents` in Application Insights) with its dimensions.

    Outcome events also get `outcome` (the event name) and update the metrics. `None` values are
    left out; names outside the contract are dropped with a warning.
    """
    if event not in _EVENT_SET:
        _off_contract("event", event)
    dims: dict[str, Any] = {}
    for key, value in dimensions.items():
        if value is None:
            continue
        if key not in _DIMENSION_SET:
            _off_contract("dimension", key)
            continue
        dims[key] = _value(key, value)
    if event in OUTCOMES:
        dims.setdefault("outcome", event)
    summary = " ".join(f"{k}={v}" for k, v in dims.items() if k not in _NOT_SUMMARISED)
    logger.log(level, "%s %s", event, summary, extra={CUSTOM_EVENT: event, **dims})
    if event in OUTCOMES:
        _record(event, dims)


# ---- metrics ----------------------------------------------------------------------------------


class _Instruments:
    def __init__(self, meter: Any) -> None:
        self.reports = meter.create_counter(
            METRIC_REPORTS, unit="{report}", description="Reports by outcome and reason."
        )
        self.graph_latency = meter.create_histogram(
            METRIC_GRAPH_LATENCY,
            unit="ms",
            description="Duration of the Graph call that decided a report's outcome.",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS_MS,
        )
        self.delivery_age = meter.create_histogram(
            METRIC_DELIVERY_AGE,
            unit="s",
            description="Time from acceptance to each delivery outcome of a queued report.",
            explicit_bucket_boundaries_advisory=_AGE_BUCKETS_S,
        )


_lock = threading.Lock()
_provider: Any = None
_instruments: _Instruments | None = None


def use_meter_provider(provider: Any | None) -> None:
    """Record metrics with this provider (tests, a custom host); `None`: the global provider."""
    global _provider, _instruments
    with _lock:
        _provider, _instruments = provider, None


def _get_instruments() -> _Instruments:
    global _instruments
    with _lock:
        if _instruments is None:
            if _provider is not None:
                meter = _provider.get_meter("bridge")
            else:
                # The API alone: a proxy until the worker's configure_azure_monitor() sets the
                # global provider, a no-op where nobody does.
                from opentelemetry import metrics

                meter = metrics.get_meter("bridge")
            _instruments = _Instruments(meter)
        return _instruments


def _record(event: str, dims: dict[str, Any]) -> None:
    try:
        instruments = _get_instruments()
        attributes = {"outcome": event}
        if "reason" in dims:
            attributes["reason"] = str(dims["reason"])
        counted = dict(attributes)
        if "detectionState" in dims:
            counted["detectionState"] = str(dims["detectionState"])
        instruments.reports.add(1, counted)
        if isinstance(dims.get("latencyMs"), int | float):
            instruments.graph_latency.record(dims["latencyMs"], attributes)
        if isinstance(dims.get("ageMs"), int | float):
            instruments.delivery_age.record(max(dims["ageMs"], 0) / 1000, attributes)
    except Exception:  # metrics must never cost a report
        logger.debug("could not record metrics for %s", event, exc_info=True)
