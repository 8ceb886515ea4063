"""Report in, Graph body out: every rule that decides a detection state lives here (no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.models import ODATA_TYPE, ComplianceReport, DetectionState, Execution

__all__ = ["TIMED_OUT_NOTE", "TRUNCATION_MARKER", "DeviceState", "cap_output", "map_report"]

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
            "lastStateUpdateDateTime": utc_text(self.last_state_update),
            "expectedStateUpdateDateTime": utc_text(self.expected_state_update),
            "lastSyncDateTime": utc_text(self.last_sync),
            "scriptOutput": self.script_output,
            "scriptError": self.script_error,
        }


def utc_text(moment: datetime) -> str:
    """Graph's DateTimeOffset in UTC with `Z`; microseconds only when present."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def cap_output(text: str, limit: int) -> str:
    """Trim trailing whitespace and keep within Intune's output limit, marking any cut visibly."""
    text = text.rstrip()
    if len(text) <= limit:
        return text
    return text[: max(limit - len(TRUNCATION_MARKER), 0)] + TRUNCATION_MARKER[:limit]


def detection_state(execution: Execution) -> DetectionState:
    """Intune's rules: timeout or no exit code is a script error; output must be one JSON object."""
    if execution.timed_out or execution.exit_code is None:
        return DetectionState.SCRIPT_ERROR
    if execution.exit_code != 0:
        return DetectionState.FAIL
    try:
        parsed = json.loads(execution.stdout.strip())
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
    stderr = execution.stderr.rstrip()
    if execution.timed_out:
        stderr = f"{stderr}\n{TIMED_OUT_NOTE}" if stderr else TIMED_OUT_NOTE
    return DeviceState(
        detection_state=report.detection_state or detection_state(execution),
        last_state_update=execution.finished_at,
        expected_state_update=report.next_run_at or execution.finished_at + script_interval,
        last_sync=report.last_sync_at or received_at,
        script_output=cap_output(execution.stdout, max_output_chars),
        script_error=cap_output(stderr, max_output_chars),
    )
