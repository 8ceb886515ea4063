"""The `logs` destination: one row per accepted report in a Log Analytics custom table.

Through the Azure Monitor Logs Ingestion API with `azure-monitor-ingestion` (the retired HTTP Data
Collector API is not an option): the library gzips and splits a batch into calls of at most 1 MB;
each failed chunk comes back through `on_error`, so only its rows are retried. Rows are history:
every accepted version keeps its row, and a retry may write a row twice, never differently.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from shared import timestamps
from shared.destinations.base import Item, Pace, Written
from shared.graph import classify, parse_retry_after
from shared.outcomes import CallResult, Outcome
from shared.settings import Settings

__all__ = ["LogsTable", "row"]

# The entity's six writable properties under their Graph names, as the DCR stream declares them.
_STATE_COLUMNS = (
    "DetectionState",
    "LastStateUpdateDateTime",
    "ExpectedStateUpdateDateTime",
    "LastSyncDateTime",
    "ScriptOutput",
    "ScriptError",
)


def row(message: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The table row of one accepted report; `TimeGenerated` is when the bridge accepted it."""
    accepted = timestamps.graph_text(timestamps.from_version(message["acceptedAt"]))
    out: dict[str, Any] = {
        "TimeGenerated": accepted,
        "ReportId": message["reportId"],
        "ScriptId": message["scriptId"],
        "DeviceId": message["deviceId"],
        "AgentVersion": message.get("agent") or "",
    }
    for column in _STATE_COLUMNS:
        out[column] = state.get(column[0].lower() + column[1:])
    return out


class LogsTable:
    name = "logs"
    ordered = False
    paced = False  # Logs Ingestion has its own limits, far above a fleet's report rate
    batch = 32

    def __init__(self, settings: Settings, credential: Any) -> None:
        from azure.monitor.ingestion import LogsIngestionClient

        endpoint = settings.logs_endpoint or ""
        # Retries are the queue's (with Retry-After), not the pipeline's.
        self.client = LogsIngestionClient(
            endpoint,
            credential,
            credential_scopes=[settings.monitor_scope],
            retry_total=0,
            connection_timeout=settings.graph_connect_timeout,
            read_timeout=settings.graph_read_timeout,
        )
        self.rule_id = settings.logs_rule_id
        self.stream = settings.logs_stream
        # The library sends a token over plain HTTP only when each call says so: the local
        # emulator on a loopback address, never anything else.
        parts = urlsplit(endpoint)
        local = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost")
        self.extra: dict[str, Any] = {"enforce_https": False} if local else {}

    def wants(self, script_id: str) -> bool:
        return True

    def write(self, items: list[Item], pace: Pace) -> list[Written]:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

        rows = [row(item.message, item.state) for item in items]
        failed: dict[int, CallResult] = {}

        def on_error(error: Any) -> None:
            result = _classify(error.error)
            for logged in error.failed_logs:
                failed[id(logged)] = result

        started = time.monotonic()
        try:
            self.client.upload(
                rule_id=self.rule_id,
                stream_name=self.stream,
                logs=rows,
                on_error=on_error,
                **self.extra,
            )
        except ClientAuthenticationError:
            return [Written(_transient("token_unavailable", started))] * len(items)
        except HttpResponseError as exc:  # raised outside a chunk, e.g. by the token request
            return [Written(_classify(exc))] * len(items)
        except Exception:  # azure-core's transport errors have several types; all are transient
            return [Written(_transient("connection_error", started))] * len(items)
        delivered = CallResult(
            Outcome.DELIVERED, "delivered", status=204, elapsed=time.monotonic() - started
        )
        return [Written(failed.get(id(r), delivered)) for r in rows]


def _transient(reason: str, started: float) -> CallResult:
    return CallResult(Outcome.TRANSIENT, reason, elapsed=time.monotonic() - started)


def _classify(error: Any) -> CallResult:
    """The service's status and error code; a chunk that never got an answer is transient."""
    response = getattr(error, "response", None)
    status = getattr(error, "status_code", None) or getattr(response, "status_code", None)
    if status is None:
        return CallResult(Outcome.TRANSIENT, "connection_error")
    headers = getattr(response, "headers", None) or {}
    code = getattr(getattr(error, "error", None), "code", None)
    outcome, reason = classify(int(status), code)
    return CallResult(
        outcome,
        reason,
        status=int(status),
        error_code=code if isinstance(code, str) else None,
        request_id=headers.get("x-ms-request-id"),
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )
