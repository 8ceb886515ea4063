"""The agent API v1 contract as pydantic types: what a device may send, and nothing more."""

from __future__ import annotations

from datetime import datetime, timedelta
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

from shared import timestamps
from shared.ids import REPORT_ID, canonical_guid
from shared.timestamps import EARLIEST

__all__ = [
    "ODATA_TYPE",
    "ComplianceReport",
    "DetectionState",
    "Execution",
    "StateBody",
]

ODATA_TYPE = "#microsoft.graph.deviceComplianceScriptDeviceState"

# DESIGN mapping rule 5: the next expected run lies at most this far ahead of the bridge's clock.
NEXT_RUN_HORIZON = timedelta(days=366)


class DetectionState(StrEnum):
    """Graph's `runState`: exactly these six members, sent by name."""

    UNKNOWN = "unknown"
    SUCCESS = "success"
    FAIL = "fail"
    SCRIPT_ERROR = "scriptError"
    PENDING = "pending"
    NOT_APPLICABLE = "notApplicable"


def _past_event(value: datetime, info: ValidationInfo) -> datetime:
    """Between 2000-01-01 and the bridge's clock plus the allowed skew."""
    if value < EARLIEST:
        raise ValueError("is before 2000-01-01T00:00:00Z; check the device clock")
    context = info.context or {}
    now: datetime | None = context.get("now")
    skew: timedelta = context.get("clock_skew", timedelta(minutes=5))
    if now is not None and value - now > skew:
        raise ValueError(
            f"is more than {int(skew.total_seconds())} s in the future; check the device clock"
        )
    return value


def _next_run(value: datetime, info: ValidationInfo) -> datetime:
    """After 2000-01-01 and at most 366 days ahead: a script runs at least once a year."""
    if value <= EARLIEST:
        raise ValueError("is not after 2000-01-01T00:00:00Z; check the device clock")
    now: datetime | None = (info.context or {}).get("now")
    if now is not None and value - now > NEXT_RUN_HORIZON:
        raise ValueError("is more than 366 days ahead; check the device clock")
    return value


Timestamp = Annotated[datetime, BeforeValidator(timestamps.parse)]
PastTimestamp = Annotated[Timestamp, AfterValidator(_past_event)]
NextRunTimestamp = Annotated[Timestamp, AfterValidator(_next_run)]
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
    expected_state_update: NextRunTimestamp | None = Field(
        None, alias="expectedStateUpdateDateTime"
    )
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
    next_run_at: NextRunTimestamp | None = Field(None, alias="nextRunAt")
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
