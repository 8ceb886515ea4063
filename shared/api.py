"""The agent-facing HTTP contract: ingest as DESIGN's steps and the status of every answer after the
request envelope (`envelope` answers for method, media type, size, JSON and schema)."""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared import __version__, timestamps
from shared.auth import AuthError, DeviceIdentity, authenticate, check_device
from shared.ids import new_report_id
from shared.policy import Acceptance
from shared.problems import PROBLEM_BASE, PROBLEM_JSON, ApiResponse, problem
from shared.ratelimit import device_limiter
from shared.runtime import Bridge, get_bridge
from shared.settings import Settings, SettingsError
from shared.telemetry import emit, script_output

if TYPE_CHECKING:  # the agent API's models, delivery and storage load with the first report:
    # a queue-trigger instance never builds the report schema, and no instance at import time
    from shared.delivery import QueueOutcome
    from shared.mapping import DeviceState
    from shared.models import ComplianceReport

__all__ = ["PROBLEM_JSON", "ApiResponse", "health", "ingest", "problem"]

# Valid credentials that are not enough for this request are a 403; every other refusal is a 401.
# (certificate.CertificateFailure values; compared as text so that module and cryptography load
# only in certificate mode)
_FORBIDDEN = frozenset({"certificate-not-a-device", "device-mismatch"})


def _refused(error: AuthError, report_id: str | None = None) -> ApiResponse:
    """401/403 with the failed check as the slug; the credential itself is never repeated."""
    status = 403 if error.failure in _FORBIDDEN else 401
    emit("rejected", status=status, reason=error.slug, reportId=report_id)
    title = "Authentication failed" if status == 401 else "Not allowed for this device"
    return problem(status, error.slug, title, error.detail, reportId=report_id)


def _key_in_query(query: Mapping[str, str]) -> ApiResponse | None:
    """`?code=` works on the platform but lands in request logs: the key goes in a header."""
    if not any(name.lower() == "code" for name in query):
        return None
    emit("rejected", status=401, reason="function-key-in-query")
    return problem(
        401,
        "function-key-in-query",
        "Authentication failed",
        "Send the function key in the x-functions-key header, never as ?code= in the URL "
        "(query strings are logged); rotate a key that was sent that way.",
    )


def _unavailable(detail: str, retry_after: float, **extra: Any) -> ApiResponse:
    seconds = max(1, math.ceil(retry_after))
    return problem(
        503,
        "unavailable",
        "Try again later",
        detail,
        headers={"Retry-After": str(seconds)},
        **extra,
    )


def ingest(
    method: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    bridge: Bridge | None = None,
    now: datetime | None = None,
    query: Mapping[str, str] | None = None,
) -> ApiResponse:
    """Handle `POST /api/v1/compliance-script-results`; any failure a client caused is a 4xx,
    and a fault of the bridge's own is a planned 500 problem, never the host's bare one."""
    try:
        received_at = now or datetime.now(UTC)
        return _ingest(
            method, headers, body, bridge=bridge, received_at=received_at, query=query or {}
        )
    except Exception as exc:  # the last resort: every known failure was answered before here
        logging.getLogger("bridge").exception("ingest failed unexpectedly")
        emit("error", level=logging.ERROR, status=500, reason=type(exc).__name__)
        return problem(
            500,
            "internal-error",
            "Internal error",
            "The bridge failed on this report; nothing was stored. Send it again later; its "
            "operators have been told.",
        )


def _ingest(
    method: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    bridge: Bridge | None,
    received_at: datetime,
    query: Mapping[str, str],
) -> ApiResponse:
    """DESIGN's data flow: envelope, authenticate (raw bytes), parse and validate, then map."""
    from shared import envelope
    from shared.mapping import map_report

    headers = {k.lower(): v for k, v in headers.items()}
    try:
        bridge = bridge or get_bridge()
    except SettingsError:
        logging.getLogger("bridge").exception("the bridge's settings are invalid")
        return _unavailable("The bridge is misconfigured; its operators have been told.", 60)
    settings = bridge.settings
    try:
        envelope.check(method, headers, body, settings.max_body_bytes)
        if "function" in settings.auth_modes and (refusal := _key_in_query(query)):
            return refusal
        identity = authenticate(settings, headers, body, now=received_at)
        report = envelope.validate(envelope.parse(body), settings, received_at)
    except envelope.BadRequest as bad:
        slug = bad.response.body["type"].removeprefix(PROBLEM_BASE)
        emit(
            "rejected",
            status=bad.response.status,
            reason=slug,
            invalidFields=bad.invalid_fields,
        )
        return bad.response
    except AuthError as refused:
        return _refused(refused)
    # A verified webhook-id is the sender's idempotency key: it names a report that has no id.
    report_id = report.report_id or identity.webhook_id or new_report_id()
    if refusal := _check_sender(settings, identity, report, report_id):
        return refusal
    state = map_report(
        report,
        received_at=received_at,
        script_interval=settings.script_interval,
        max_output_chars=settings.max_output_chars,
    )
    return _accept(
        bridge,
        report_id=report_id,
        report=report,
        state=state,
        received_at=received_at,
        agent=_agent(headers),
    )


def _check_sender(
    settings: Settings, identity: DeviceIdentity, report: ComplianceReport, report_id: str
) -> ApiResponse | None:
    """The device, the script and the device's rate: a refusal, or None to go on."""
    try:
        check_device(identity, report.device_id)
    except AuthError as refused:
        return _refused(refused, report_id)
    if settings.allowed_script_ids and report.script_id not in settings.allowed_script_ids:
        emit("rejected", status=403, reason="script-not-allowed", reportId=report_id)
        return problem(
            403,
            "script-not-allowed",
            "Script not allowed",
            "This bridge does not accept results for that script.",
            reportId=report_id,
        )
    wait = device_limiter(settings.device_rate_limit).acquire(report.device_id)
    if wait is not None:
        emit("rejected", status=429, reason="rate-limited", reportId=report_id)
        return problem(
            429,
            "rate-limited",
            "Too many reports",
            f"This device sent more than {settings.device_rate_limit} reports in a minute; "
            f"send again in {wait} s.",
            headers={"Retry-After": str(wait)},
            reportId=report_id,
        )
    return None


_AGENT = re.compile(r"intune-compliance-agent/([A-Za-z0-9._+-]{1,32})")


def _agent(headers: Mapping[str, str]) -> str | None:
    """The reference agents name their version in User-Agent, so a rollout can be followed."""
    match = _AGENT.search(headers.get("user-agent", "")[:256])
    return match.group(1) if match else None


def _accepted(
    report_id: str,
    report: ComplianceReport,
    state: DeviceState,
    *,
    with_output: bool,
    agent: str | None,
) -> None:
    emit(
        "accepted",
        reportId=report_id,
        scriptId=report.script_id,
        deviceId=report.device_id,
        detectionState=state.detection_state.value,
        agentVersion=agent,
        scriptOutput=script_output(state.script_output, with_output),
    )


def _ignored(report_id: str, report: ComplianceReport, reason: str) -> ApiResponse:
    emit("ignored", reportId=report_id, reason=reason, scriptId=report.script_id,
         deviceId=report.device_id)  # fmt: skip
    return ApiResponse(200, {"reportId": report_id, "status": "ignored", "reason": reason})


def _not_stored(report_id: str) -> ApiResponse:
    logging.getLogger("bridge").exception("could not store report %s", report_id)
    return _unavailable(
        "The report could not be stored; nothing was kept, send it again later.",
        5,
        reportId=report_id,
    )


def _accept(
    bridge: Bridge,
    *,
    report_id: str,
    report: ComplianceReport,
    state: DeviceState,
    received_at: datetime,
    agent: str | None,
) -> ApiResponse:
    """Stale check, record, then one message per destination (sync: Graph written inline).

    Store first, answer second: a 2xx means the report is kept (or was already known). The
    same checks, claim, budget and dead-lettering hold in both delivery modes.
    """
    # Any Azure SDK failure on the way to storage: the service, or the identity that reaches it.
    from azure.core.exceptions import AzureError

    from shared import messages

    settings = bridge.settings
    version = timestamps.version(state.last_state_update)
    names = [
        name
        for name, destination in bridge.destinations.items()
        if destination.wants(report.script_id)
    ]
    inline = settings.delivery_mode == "sync" and "graph" in names
    lease = settings.delivery_lease.total_seconds()
    try:
        accepted = bridge.storage.runstates.accept(
            report.script_id,
            report.device_id,
            version,
            report_id,
            state.detection_state.value,
            claim=("graph", lease) if inline else None,
        )
    except AzureError:
        return _not_stored(report_id)
    if accepted.acceptance is not Acceptance.NEW:
        return _ignored(report_id, report, accepted.acceptance.value)
    if inline and not accepted.owner:
        return _unavailable(
            "Another report for this device and script is being written; send it again shortly.",
            accepted.busy,
            reportId=report_id,
            reason="busy",
        )
    build = functools.partial(
        messages.build,
        report_id=report_id,
        script_id=report.script_id,
        device_id=report.device_id,
        state=state,
        received_at=received_at,
        agent=agent,
        row=accepted.row.snapshot(),
    )
    if inline:
        outcome = bridge.delivery("graph").deliver_now(
            build("graph"), accepted.row, accepted.owner, settings.sync_max_wait.total_seconds()
        )
        if outcome.outcome == "retried":
            bridge.storage.runstates.unaccept(accepted.row, version, accepted.previous)
            return _sync_response(report_id, report, state, outcome)
        names.remove("graph")
    try:
        for name in names:
            bridge.storage.enqueue(build(name))
    except AzureError:
        bridge.storage.runstates.unaccept(accepted.row, version, accepted.previous)
        return _not_stored(report_id)
    _accepted(report_id, report, state, with_output=settings.telemetry_script_output, agent=agent)
    if inline:
        return _sync_response(report_id, report, state, outcome)
    return ApiResponse(202, {"reportId": report_id, "status": "queued"})


def _sync_response(
    report_id: str, report: ComplianceReport, state: DeviceState, outcome: QueueOutcome
) -> ApiResponse:
    """Sync mode answers with Graph's outcome: 200 delivered, 502 refused for good, else 503."""
    from shared.delivery import emit_outcome

    emit_outcome("graph", outcome, None)
    result = outcome.result
    detection_state = state.detection_state.value
    if outcome.outcome == "delivered" and result is not None:
        return ApiResponse(
            200,
            {
                "reportId": report_id,
                "status": "delivered",
                "detectionState": detection_state,
                "graphRequestId": result.request_id,
            },
        )
    graph = None
    if result is not None:
        graph = {"status": result.status, "code": result.error_code, "requestId": result.request_id}
    if outcome.outcome == "poisoned" and result is not None:
        status_text = f"{result.status} {result.error_code or ''}".strip()
        return problem(
            502,
            f"graph-{outcome.reason.replace('_', '-')}",
            "Graph refused the report",
            f"Graph answered {status_text} ({outcome.reason}); request-id {result.request_id}. "
            "The report was dead-lettered; do not send it again.",
            reportId=report_id,
            reason=outcome.reason,
            graph=graph,
        )
    return _unavailable(
        f"Graph is unavailable ({outcome.reason}); the report was not stored, send it again later.",
        outcome.delay or 30,
        reportId=report_id,
        reason=outcome.reason,
        graph=graph,
    )


def health() -> ApiResponse:
    """No credentials needed and no secrets shown: whether settings load, and which mode runs."""
    try:
        settings = get_bridge().settings
    except SettingsError as exc:
        # Anonymous callers learn which settings to fix, never what they hold.
        names = ", ".join(dict.fromkeys(exc.names)) or "unknown"
        return problem(503, "misconfigured", "Bridge misconfigured", f"Invalid settings: {names}.")
    return ApiResponse(
        200,
        {
            "status": "ok",
            "version": __version__,
            "deliveryMode": settings.delivery_mode,
            "graphCloud": settings.graph_cloud.value,
        },
    )
