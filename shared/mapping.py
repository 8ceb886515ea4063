"""Report in, Graph body out: every rule that decides a detection state lives here (no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from shared.models import ODATA_TYPE, ComplianceReport, DetectionState, Execution
from shared.timestamps import graph_text

__all__ = [
    "TIMED_OUT_NOTE",
    "TRUNCATION_MARKER",
    "DeviceState",
    "cap_output",
    "map_report",
    "reject_duplicates",
    "strict_json",
]

TRUNCATION_MARKER = "\n[truncated by the bridge: output exceeded the Intune limit]"
TIMED_OUT_NOTE = "[the detection script timed out before it finished]"


@dataclass(frozen=True, slots=True)
class DeviceState:
    """The six writable properties of `deviceComplianceScriptDeviceState`."""

    detection_state: DetectionState
    last_state_update: datetime
    expected_state_update: datetime
    last_sync: datetime
    script_output: str
    script_error: str

    def patch_body(self) -> dict[str, str]:
        """The PATCH body: `@odata.type` plus the six properties, never `id`."""
        return {
            "@odata.type": ODATA_TYPE,
            "detectionState": self.detection_state.value,
            "lastStateUpdateDateTime": graph_text(self.last_state_update),
            "expectedStateUpdateDateTime": graph_text(self.expected_state_update),
            "lastSyncDateTime": graph_text(self.last_sync),
            "scriptOutput": self.script_output,
            "scriptError": self.script_error,
        }


def cap_output(text: str, limit: int) -> str:
    """Trim trailing whitespace and keep within Intune's output limit, marking any cut visibly."""
    text = text.rstrip()
    if len(text) <= limit:
        return text
    return text[: max(limit - len(TRUNCATION_MARKER), 0)] + TRUNCATION_MARKER[:limit]


def reject_duplicates(items: list[tuple[str, Any]], max_keys: int | None = None) -> dict[str, Any]:
    """`object_pairs_hook`: one pass with a set, so a body of 60,000 keys costs milliseconds (a
    `keys.count` per key cost a minute of CPU); `max_keys` bounds an object's width."""
    if max_keys is not None and len(items) > max_keys:
        raise ValueError(f"an object has more than {max_keys} keys")
    obj = dict(items)
    if len(obj) != len(items):
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise ValueError(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return obj


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def strict_json(text: str, max_keys: int | None = None) -> Any:
    """JSON as RFC 8259 means it, for the request body and for script output alike: no NaN or
    Infinity, no duplicate key. Every failure, however deep the nesting, is a ValueError."""
    try:
        return json.loads(
            text,
            object_pairs_hook=partial(reject_duplicates, max_keys=max_keys),
            parse_constant=_no_constant,
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None


def detection_state(execution: Execution) -> DetectionState:
    """Intune's rules: timeout or no exit code is a script error; output must be one JSON object."""
    if execution.timed_out or execution.exit_code is None:
        return DetectionState.SCRIPT_ERROR
    if execution.exit_code != 0:
        return DetectionState.FAIL
    try:
        parsed = strict_json(execution.stdout.strip())
    except ValueError:
        return DetectionState.SCRIPT_ERROR  # Intune's 65009: invalid JSON
    return DetectionState.SUCCESS if isinstance(parsed, dict) else DetectionState.SCRIPT_ERROR


def map_report(
    report: ComplianceReport,
    *,
    received_at: datetime,
    script_interval: timedelta,
    max_output_chars: int,
) -> DeviceState:
    if report.state is not None:
        state = report.state
        return DeviceState(
            detection_state=state.detection_state,
            last_state_update=state.last_state_update,
            expected_state_update=state.expected_state_update
            or state.last_state_update + script_interval,
            last_sync=state.last_sync or received_at,
            script_output=cap_output(state.script_output or "", max_output_chars),
            script_error=cap_output(state.script_error or "", max_output_chars),
        )
    execution = report.execution
    if execution is None:  # unreachable: the model requires exactly one form
        raise ValueError("report has neither state nor execution")
    return DeviceState(
        detection_state=report.detection_state or detection_state(execution),
        last_state_update=execution.finished_at,
        expected_state_update=report.next_run_at or execution.finished_at + script_interval,
        last_sync=report.last_sync_at or received_at,
        script_output=cap_output(execution.stdout, max_output_chars),
        script_error=_script_error(execution, max_output_chars),
    )


def _script_error(execution: Execution, limit: int) -> str:
    """stderr, capped first so the timed-out note always survives a cut."""
    if not execution.timed_out:
        return cap_output(execution.stderr, limit)
    stderr = cap_output(execution.stderr, max(limit - len(TIMED_OUT_NOTE) - 1, 0))
    return f"{stderr}\n{TIMED_OUT_NOTE}" if stderr else TIMED_OUT_NOTE
