"""The agent API v1 contract as pydantic types: what a device may send, and nothing more."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.ids import REPORT_ID, canonical_guid

__all__ = [
    "ODATA_TYPE",
    "ComplianceReport",
    "DetectionState",
    "Execution",
    "StateBody",
    "parse_timestamp",
]

ODATA_TYPE = "#microsoft.graph.deviceComplianceScriptDeviceState"

# Graph's DateTimeOffset: a zone is mandatory; fractions up to 12 digits.
_TIMESTAMP = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,12}))?"
    r"(?P<zone>[Zz]|[+-]\d{2}:\d{2})?$"
)


class DetectionState(StrEnum):
    """Graph's `runState`: exactly these six members, sent by name."""

    UNKNOWN = "unknown"
    SUCCESS = "success"
    FAIL = "fail"
    SCRIPT_ERROR = "scriptError"
    PENDING = "pending"
    NOT_APPLICABLE = "notApplicable"


def parse_timestamp(value: Any) -> datetime:
    """Strict RFC 3339 with a zone: Graph would guess a naive time wrong, so it is refused."""
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string such as 2026-11-28T10:00:00Z")
    m = _TIMESTAMP.match(value.strip())
    if not m:
        raise ValueError("must be an RFC 3339 timestamp such as 2026-11-28T10:00:00Z")
    if not m.group("zone"):
        raise ValueError("must carry a zone offset (Z or +hh:mm); naive timestamps are ambiguous")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    zone = m.group("zone")
    if zone in ("Z", "z"):
        tz = UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError("has an invalid zone offset")
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"is not a valid date/time ({exc})") from None


def _not_in_future(value: datetime, info: ValidationInfo) -> datetime:
    context = info.context or {}
    now: datetime | None = context.get("now")
    skew: timedelta = context.get("clock_skew", timedelta(minutes=5))
    if now is not None and value - now > skew:
        raise ValueError(
            f"is more than {int(skew.total_seconds())} s in the future; check the device clock"
        )
    return value


Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp)]
PastTimestamp = Annotated[Timestamp, AfterValidator(_not_in_future)]
Guid = Annotated[str, BeforeValidator(lambda v: canonical_guid(v) if isinstance(v, str) else v)]


def _report_id(value: Any) -> Any:
    if isinstance(value, str) and not REPORT_ID.fullmatch(value):
        raise ValueError("must be 1-64 characters of A-Z a-z 0-9 . _ -")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Execution(_Strict):
    """What the agent observed when it ran the detection script."""

    exit_code: StrictInt | None = Field(None, alias="exitCode")
    stdout: StrictStr = ""
    stderr: StrictStr = ""
    started_at: PastTimestamp | None = Field(None, alias="startedAt")
    finished_at: PastTimestamp = Field(alias="finishedAt")
    timed_out: StrictBool = Field(False, alias="timedOut")

    @model_validator(mode="after")
    def _ordered(self) -> Execution:
        if self.started_at is not None and self.started_at > self.finished_at:
            raise ValueError("finishedAt is earlier than startedAt")
        return self


class StateBody(_Strict):
    """The entity's own writable properties, for agents that compute the state themselves."""

    odata_type: Literal["#microsoft.graph.deviceComplianceScriptDeviceState"] | None = Field(
        None, alias="@odata.type"
    )
    detection_state: DetectionState = Field(alias="detectionState")
    last_state_update: PastTimestamp = Field(alias="lastStateUpdateDateTime")
    expected_state_update: Timestamp | None = Field(None, alias="expectedStateUpdateDateTime")
    last_sync: PastTimestamp | None = Field(None, alias="lastSyncDateTime")
    script_output: StrictStr | None = Field(None, alias="scriptOutput")
    script_error: StrictStr | None = Field(None, alias="scriptError")
    # Declared only so a sent `id` is refused by name (`state.id`) rather than as an unknown field.
    id_: Any = Field(None, alias="id", exclude=True)

    @field_validator("id_", mode="before")
    @classmethod
    def _no_id(cls, value: Any) -> Any:
        raise ValueError("is read-only; the bridge derives the run-state id itself")


class ComplianceReport(_Strict):
    """One detection-script result from one device: `execution` or `state`, never both."""

    device_id: Guid = Field(alias="deviceId")
    script_id: Guid = Field(alias="scriptId")
    report_id: Annotated[StrictStr, BeforeValidator(_report_id)] | None = Field(
        None, alias="reportId"
    )
    execution: Execution | None = None
    state: StateBody | None = None
    detection_state: DetectionState | None = Field(None, alias="detectionState")
    next_run_at: Timestamp | None = Field(None, alias="nextRunAt")
    last_sync_at: PastTimestamp | None = Field(None, alias="lastSyncAt")

    @model_validator(mode="after")
    def _one_form(self) -> ComplianceReport:
        if (self.execution is None) == (self.state is None):
            raise ValueError("send exactly one of execution or state")
        if self.state is not None:
            given = [
                alias
                for alias, value in (
                    ("detectionState", self.detection_state),
                    ("nextRunAt", self.next_run_at),
                    ("lastSyncAt", self.last_sync_at),
                )
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"{', '.join(given)} belong with execution; with state use its own properties"
                )
        return self
