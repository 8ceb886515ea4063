"""The agent-facing HTTP contract: every status code and problem+json body is decided here, once."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from typing import Any

from pydantic import ValidationError

from shared.auth import AuthError, DeviceIdentity, authenticate, check_device
from shared.certificate import CertificateFailure
from shared.delivery import DeliveryResult, deliver, queue_message, version_key
from shared.graph import Outcome
from shared.ids import new_report_id
from shared.mapping import DeviceState, map_report, strict_json
from shared.models import ComplianceReport
from shared.ratelimit import device_limiter
from shared.runtime import Bridge, get_bridge
from shared.settings import Settings, SettingsError
from shared.store import StorageError
from shared.telemetry import emit, script_output

__all__ = ["PROBLEM_JSON", "ApiResponse", "health", "ingest", "problem"]

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "urn:intune-compliance-bridge:problem:"
VERSION = "1.0.0"
_MAX_JSON_DEPTH = 32
# The widest object the contract has is 8 keys; anything far wider is an attack on the parser.
MAX_OBJECT_KEYS = 64
# A 422 lists this many fields at most, each name cut to _MAX_FIELD_CHARS: a body of 200,000
# unknown keys must not earn an answer ten times its size.
MAX_LISTED_ERRORS = 20
_MAX_FIELD_CHARS = 64
_ASCII_DIGITS = re.compile(r"[0-9]{1,18}")
# Valid credentials that are not enough for this request are a 403; every other refusal is a 401.
_FORBIDDEN = frozenset({CertificateFailure.NOT_A_DEVICE, CertificateFailure.DEVICE_MISMATCH})


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def body_bytes(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


class _BadRequest(Exception):
    def __init__(self, response: ApiResponse, invalid_fields: int | None = None) -> None:
        self.response = response
        self.invalid_fields = invalid_fields


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
    for err in exc.errors(include_url=False, include_input=False)[:MAX_LISTED_ERRORS]:
        path = ".".join(str(part) for part in err["loc"]) or "$"
        if len(path) > _MAX_FIELD_CHARS:
            path = path[:_MAX_FIELD_CHARS] + "..."
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field; the agent API rejects fields it does not define"
        elif err["type"] == "missing":
            message = "required"
        out.append({"field": path, "message": message})
    return out


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


def _check_envelope(method: str, headers: Mapping[str, str], body: bytes, max_bytes: int) -> None:
    """Method, media type and size: the checks that need neither credentials nor parsing."""
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
    if not _is_json(headers.get("content-type", "")):
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
        # ASCII digits only: `str.isdigit` admits `²`, which `int()` then refuses.
        if not declared.isascii() or not declared.isdigit():
            raise _BadRequest(
                problem(400, "bad-request", "Bad request", "Content-Length is not a number.")
            )
        if not _ASCII_DIGITS.fullmatch(declared) or int(declared) > max_bytes:
            raise _BadRequest(_too_large(max_bytes))
    if len(body) > max_bytes:
        raise _BadRequest(_too_large(max_bytes))


def _is_json(content_type: str) -> bool:
    """`application/json`, with no charset or UTF-8; other parameters are allowed (RFC 9110)."""
    message = Message()
    message["content-type"] = content_type
    charset = message.get_param("charset")
    utf8 = charset is None or str(charset).lower() in ("utf-8", "utf8")
    return message.get_content_type() == "application/json" and utf8


def _parse(body: bytes) -> dict[str, Any]:
    """Strict JSON, shallow and narrow, and an object: run only for authenticated callers, so
    nobody else learns anything from the parser's diagnostics."""
    try:
        data = strict_json(body.decode("utf-8"), MAX_OBJECT_KEYS)
    except UnicodeDecodeError:
        raise _BadRequest(_invalid_json("not UTF-8")) from None
    except ValueError as exc:
        raise _BadRequest(_invalid_json(str(exc).splitlines()[0][:200])) from None
    if _depth(data, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise _BadRequest(_invalid_json("nested too deeply"))
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


def _invalid_json(reason: str) -> ApiResponse:
    return problem(400, "invalid-json", "Unreadable JSON", f"The body is not valid JSON: {reason}.")


def _too_large(max_bytes: int) -> ApiResponse:
    return problem(
        413,
        "payload-too-large",
        "Payload too large",
        f"The body exceeds {max_bytes} bytes; cap script output on the device.",
    )


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
    headers = {k.lower(): v for k, v in headers.items()}
    try:
        bridge = bridge or get_bridge()
    except SettingsError:
        logging.getLogger("bridge").exception("the bridge's settings are invalid")
        return _unavailable("The bridge is misconfigured; its operators have been told.", 60)
    settings = bridge.settings
    try:
        _check_envelope(method, headers, body, settings.max_body_bytes)
        if "function" in settings.auth_modes and (refusal := _key_in_query(query)):
            return refusal
        identity = authenticate(settings, headers, body, now=received_at)
        report = _validate(_parse(body), settings, received_at)
    except _BadRequest as bad:
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
    if settings.delivery_mode == "queue":
        return _enqueue(bridge, report_id, report, state, received_at)
    _accepted(report_id, report, state, settings.telemetry_script_output)
    delivery = deliver(
        bridge.graph,
        script_id=report.script_id,
        device_id=report.device_id,
        state=state,
        template=settings.run_state_id_template,
        attempts=settings.sync_attempts,
        max_wait=settings.sync_max_wait,
        pacer=bridge.pacer,
    )
    return _delivery_response(report_id, report, state.detection_state.value, delivery)


def _validate(data: dict[str, Any], settings: Settings, received_at: datetime) -> ComplianceReport:
    try:
        return ComplianceReport.model_validate(
            data, context={"now": received_at, "clock_skew": settings.clock_skew}
        )
    except ValidationError as exc:
        errors = _field_errors(exc)
        listed = "." if exc.error_count() <= len(errors) else f"; the first {len(errors)} listed."
        raise _BadRequest(
            problem(
                422,
                "invalid-report",
                "Invalid report",
                f"{exc.error_count()} field(s) failed validation{listed}",
                errors=errors,
            ),
            exc.error_count(),
        ) from None


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


def _accepted(
    report_id: str, report: ComplianceReport, state: DeviceState, with_output: bool = False
) -> None:
    emit(
        "accepted",
        reportId=report_id,
        scriptId=report.script_id,
        deviceId=report.device_id,
        detectionState=state.detection_state.value,
        scriptOutput=script_output(state.script_output, with_output),
    )


def _enqueue(
    bridge: Bridge,
    report_id: str,
    report: ComplianceReport,
    state: DeviceState,
    received_at: datetime,
) -> ApiResponse:
    """Store first, answer second: a 2xx means the report is in the queue (or already known)."""
    version = version_key(state.last_state_update)
    try:
        storage = bridge.storage
        newest = storage.runstates.newest_accepted(report.script_id, report.device_id)
        if newest is not None and newest >= version:
            reason = "duplicate" if newest == version else "stale"
            emit("ignored", reportId=report_id, reason=reason, scriptId=report.script_id,
                 deviceId=report.device_id)  # fmt: skip
            return ApiResponse(200, {"reportId": report_id, "status": "ignored", "reason": reason})
        storage.enqueue(
            queue_message(report_id, report.script_id, report.device_id, state, received_at)
        )
    except (StorageError, ValueError):
        logging.getLogger("bridge").exception("could not store report %s", report_id)
        return _unavailable(
            "The report could not be stored; nothing was kept, send it again later.",
            5,
            reportId=report_id,
        )
    try:
        storage.runstates.accept(
            report.script_id, report.device_id, version, report_id, state.detection_state.value
        )
    except StorageError:
        # The report is queued; delivery records it in the table when it claims the write.
        logging.getLogger("bridge").warning("report %s queued but not recorded", report_id)
    _accepted(report_id, report, state, bridge.settings.telemetry_script_output)
    return ApiResponse(202, {"reportId": report_id, "status": "queued"})


def _delivery_response(
    report_id: str, report: ComplianceReport, detection_state: str, delivery: DeliveryResult
) -> ApiResponse:
    result = delivery.result
    dims = {
        "reportId": report_id,
        "scriptId": report.script_id,
        "deviceId": report.device_id,
        "detectionState": detection_state,
        "reason": result.reason,
        "attempt": delivery.attempts,
        "graphStatus": result.status,
        "graphRequestId": result.request_id,
        "clientRequestId": result.client_request_id,
        "latencyMs": round(result.elapsed * 1000, 1),
    }
    if result.outcome is Outcome.DELIVERED:
        emit("delivered", **dims)
        return ApiResponse(
            200,
            {
                "reportId": report_id,
                "status": "delivered",
                "detectionState": detection_state,
                "graphRequestId": result.request_id,
            },
        )
    graph = {"status": result.status, "code": result.error_code, "requestId": result.request_id}
    if result.outcome is Outcome.PERMANENT:
        emit("poisoned", level=logging.WARNING, **dims)
        status_text = f"{result.status} {result.error_code or ''}".strip()
        return problem(
            502,
            f"graph-{result.reason.replace('_', '-')}",
            "Graph refused the report",
            f"Graph answered {status_text} ({result.reason}); request-id {result.request_id}.",
            reportId=report_id,
            reason=result.reason,
            graph=graph,
        )
    emit("retried", level=logging.WARNING, **dims)
    return _unavailable(
        f"Graph is unavailable ({result.reason}); the report was not stored, send it again later.",
        result.retry_after if result.retry_after is not None else 30,
        reportId=report_id,
        reason=result.reason,
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
            "version": VERSION,
            "deliveryMode": settings.delivery_mode,
            "graphCloud": settings.graph_cloud.value,
        },
    )
