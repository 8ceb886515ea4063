"""The queue message schema: one message per (report, destination), and the poison envelope.

Delivery, replay and status all read these shapes, so they live here and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared import timestamps
from shared.ids import canonical_guid

if TYPE_CHECKING:  # delivery reads messages without the agent API's models
    from shared.mapping import DeviceState

__all__ = [
    "SCHEMA",
    "MalformedMessage",
    "accepted_at",
    "build",
    "parse",
    "poison",
    "state_digest",
    "unwrap_poison",
]

SCHEMA = 1
# Messages the host itself dead-lettered (its maxDequeueCount) carry no reason of ours.
HOST_POISONED = "max_dequeue_count"


class MalformedMessage(ValueError):
    """A queue message that is not one of ours: it goes to poison, never round and round."""


def state_digest(state: dict[str, Any]) -> str:
    """What "unchanged" means for a refresh: the detection state and both outputs, nothing else."""
    key = [state.get("detectionState"), state.get("scriptOutput"), state.get("scriptError")]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]


def build(
    destination: str,
    *,
    report_id: str,
    script_id: str,
    device_id: str,
    state: DeviceState,
    received_at: datetime,
    agent: str | None = None,
    row: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One destination's message; `row` is the run-state row as ingest left it (ETag and all),
    so the claim can act on it without reading it again while nobody has written since."""
    body = state.patch_body()
    message: dict[str, Any] = {
        "schema": SCHEMA,
        "destination": destination,
        "reportId": report_id,
        "scriptId": script_id,
        "deviceId": device_id,
        "version": timestamps.version(state.last_state_update),
        "detectionState": state.detection_state.value,
        "digest": state_digest(body),
        "acceptedAt": timestamps.version(received_at),
        "attempt": 0,
        "state": body,
    }
    if agent:
        message["agent"] = agent
    if row is not None:
        message["row"] = row
    return message


def accepted_at(message: dict[str, Any]) -> datetime:
    return timestamps.from_version(message["acceptedAt"])


def parse(text: str, destination: str) -> dict[str, Any]:
    """A message of ours for this destination, checked before any of it reaches a URL."""
    try:
        message = json.loads(text)
        if not isinstance(message, dict) or message.get("schema") != SCHEMA:
            raise MalformedMessage("not a bridge message")
        for key in ("scriptId", "deviceId"):
            canonical_guid(message[key])
        if message.setdefault("destination", destination) != destination:
            raise MalformedMessage("a message for another destination")
        if not isinstance(message["version"], str) or not isinstance(message["attempt"], int):
            raise MalformedMessage("bad version or attempt")
        timestamps.from_version(message["version"])
        accepted_at(message)
        if not isinstance(message.get("state"), dict) and not isinstance(
            message.get("statePayload"), str
        ):
            raise MalformedMessage("no state")
    except MalformedMessage:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedMessage(type(exc).__name__) from None
    return message


def poison(
    message: dict[str, Any], reason: str, error: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """What an operator needs to act: the report, why it stopped, and the service's own words."""
    return {
        "report": message,
        "reason": reason,
        "destination": message.get("destination"),
        "error": error,
        "poisonedAt": timestamps.version(datetime.now(UTC)),
        **extra,
    }


def unwrap_poison(content: str) -> tuple[str, dict[str, Any] | None]:
    """(reason, report message) of one poison message; malformed ones carry no report."""
    try:
        data = json.loads(content)
    except ValueError:
        return "malformed_message", None
    if isinstance(data, dict) and data.get("schema") == SCHEMA:
        return HOST_POISONED, data
    if isinstance(data, dict) and isinstance(data.get("report"), dict):
        report = data["report"]
        reason = str(data.get("reason") or "unknown")
        return reason, report if report.get("schema") == SCHEMA else None
    return "malformed_message", None
