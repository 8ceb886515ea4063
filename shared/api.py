"""The agent-facing HTTP contract: every status code and problem+json body is decided here, once."""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from shared import messages, timestamps
from shared.auth import AuthError, authenticate, check_device
from shared.delivery import QueueOutcome, emit_outcome
from shared.ids import new_report_id
from shared.mapping import DeviceState, map_report
from shared.models import ComplianceReport
from shared.policy import Acceptance
from shared.ratelimit import device_limiter
from shared.runtime import Bridge, get_bridge
from shared.settings import SettingsError
from shared.store import StorageError
from shared.telemetry import emit, script_output

__all__ = ["PROBLEM_JSON", "ApiResponse", "health", "ingest", "problem"]

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "urn:intune-compliance-bridge:problem:"
VERSION = "1.0.0"
_MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def body_bytes(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


class _BadRequest(Exception):
    def __init__(self, response: ApiResponse) -> None:
        self.response = response


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ApiResponse:
    """RFC 9457 problem details; `type` names the slug documented in docs/agent-api.md."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    body.update({k: v for k, v in extra.items() if v is not None})
    return ApiResponse(status, body, headers or {}, PROBLEM_JSON)


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """One entry per invalid field, named by its JSON path; the input itself is never echoed."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in err["loc"]) or "$"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field; the agent API rejects fields it does not define"
        elif err["type"] == "missing":
            message = "required"
        out.append({"field": path, "message": message})
    return out


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"duplicate key {duplicate!r}")
    return dict(pairs)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _check_envelope(method: str, headers: Mapping[str, str], body: bytes, max_bytes: int) -> Any:
    """Method, media type, size and JSON syntax: the checks that need no schema."""
    if method.upper() != "POST":
        raise _BadRequest(
            problem(
                405,
                "method-not-allowed",
                "Method not allowed",
                f"{method.upper()[:16]} is not supported here; send POST.",
                headers={"Allow": "POST"},
            )
        )
    content_type = headers.get("content-type", "")
    media, _, params = content_type.partition(";")
    charset = params.strip().lower().removeprefix("charset=").strip('"') if params.strip() else ""
    if media.strip().lower() != "application/json" or charset not in ("", "utf-8"):
        raise _BadRequest(
            problem(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "Send the report as Content-Type: application/json (UTF-8).",
            )
        )
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise _BadRequest(
                problem(400, "bad-request", "Bad request", "Content-Length is not a number.")
            )
        if int(declared) > max_bytes:
            raise _BadRequest(_too_large(max_bytes))
    if len(body) > max_bytes:
        raise _BadRequest(_too_large(max_bytes))
    try:
        data = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if isinstance(exc, ValueError) else "not UTF-8"
        if isinstance(exc, RecursionError):
            reason = "nested too deeply"
        raise _BadRequest(
            problem(
                400, "invalid-json", "Unreadable JSON", f"The body is not valid JSON: {reason}."
            )
        ) from None
    if _depth(data, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise _BadRequest(
            problem(400, "invalid-json", "Unreadable JSON", "The body is nested too deeply.")
        )
    if not isinstance(data, dict):
        raise _BadRequest(
            problem(
                422,
                "invalid-report",
                "Invalid report",
                "The body must be a JSON object.",
                errors=[{"field": "$", "message": "must be a JSON object"}],
            )
        )
    return data


def _too_large(max_bytes: int) -> ApiResponse:
    return problem(
        413,
        "payload-too-large",
        "Payload too large",
        f"The body exceeds {max_bytes} bytes; cap script output on the device.",
    )


def _refused(error: AuthError, report_id: str | None = None) -> ApiResponse:
    """401/403 with the failed check as the slug; the credential itself is never repeated."""
    emit("rejected", status=error.status, reason=error.slug, reportId=report_id)
    title = "Authentication failed" if error.status == 401 else "Not allowed for this device"
    return problem(error.status, error.slug, title, error.detail, reportId=report_id)


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
) -> ApiResponse:
    """Handle `POST /api/v1/compliance-script-results`; any failure a client caused is a 4xx."""
    received_at = now or datetime.now(UTC)
    headers = {k.lower(): v for k, v in headers.items()}
    try:
        bridge = bridge or get_bridge()
    except SettingsError:
        logging.getLogger("bridge").exception("the bridge's settings are invalid")
        return _unavailable("The bridge is misconfigured; its operators have been told.", 60)
    settings = bridge.settings
    try:
        data = _check_envelope(method, headers, body, settings.max_body_bytes)
        identity = authenticate(settings, headers, body, now=received_at)
        report = ComplianceReport.model_validate(
            data, context={"now": received_at, "clock_skew": settings.clock_skew}
        )
    except _BadRequest as bad:
        slug = bad.response.body["type"].removeprefix(PROBLEM_BASE)
        emit("rejected", status=bad.response.status, reason=slug)
        return bad.response
    except AuthError as refused:
        return _refused(refused)
    except ValidationError as exc:
        errors = _field_errors(exc)
        emit("rejected", status=422, reason="invalid-report", invalidFields=len(errors))
        return problem(
            422,
            "invalid-report",
            "Invalid report",
            f"{len(errors)} field(s) failed validation.",
            errors=errors,
        )
    # A verified webhook-id is the sender's idempotency key: it names a report that has no id.
    report_id = report.report_id or identity.webhook_id or new_report_id()
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
    except StorageError:
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
    except StorageError:
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
        return problem(503, "misconfigured", "Bridge misconfigured", str(exc))
    return ApiResponse(
        200,
        {
            "status": "ok",
            "version": VERSION,
            "deliveryMode": settings.delivery_mode,
            "graphCloud": settings.graph_cloud.value,
        },
    )
