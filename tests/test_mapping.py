"""DESIGN.md's mapping rules, one row per rule, read as a specification."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack import graph as graph_emulator
from shared.mapping import TIMED_OUT_NOTE, TRUNCATION_MARKER, cap_output, map_report
from shared.models import ComplianceReport, DetectionState

DEVICE = "6f1b4c2e-8d3a-4b7e-9c1f-2a5d8e9b0c11"
SCRIPT = "3c9e7a1d-5b2f-4e8c-a6d4-1f0b9e8c7a25"
RECEIVED = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
INTERVAL = timedelta(hours=8)


def report(execution: dict[str, Any] | None = None, **top: Any) -> ComplianceReport:
    body: dict[str, Any] = {"deviceId": DEVICE, "scriptId": SCRIPT, **top}
    if execution is not None or "state" not in top:
        body["execution"] = {"exitCode": 0, "stdout": "{}", "finishedAt": "2026-11-28T10:00:02Z"}
        body["execution"].update(execution or {})
    return ComplianceReport.model_validate(body, context={"now": RECEIVED})


def mapped(rep: ComplianceReport, limit: int = 1_048_576) -> dict[str, str]:
    state = map_report(rep, received_at=RECEIVED, script_interval=INTERVAL, max_output_chars=limit)
    return state.patch_body()


DETECTION_RULES = [
    pytest.param({}, {}, "success", id="exit-0-with-one-json-object-is-success"),
    pytest.param({"stdout": '  {"a": 1}\n\n'}, {}, "success", id="stdout-is-trimmed-before-parse"),
    pytest.param({"exitCode": 1}, {}, "fail", id="non-zero-exit-is-fail"),
    pytest.param({"exitCode": -1073741819}, {}, "fail", id="negative-exit-is-fail"),
    pytest.param({"exitCode": None}, {}, "scriptError", id="null-exit-code-is-script-error"),
    pytest.param({"timedOut": True}, {}, "scriptError", id="timed-out-is-script-error"),
    pytest.param({"stdout": "BitLocker=On"}, {}, "scriptError", id="non-json-stdout-is-65009"),
    pytest.param({"stdout": ""}, {}, "scriptError", id="empty-stdout-is-script-error"),
    pytest.param({"stdout": "[1, 2]"}, {}, "scriptError", id="json-array-is-not-an-object"),
    pytest.param({"stdout": '"on"'}, {}, "scriptError", id="json-string-is-not-an-object"),
    pytest.param({"stdout": "{}{}"}, {}, "scriptError", id="two-objects-are-not-one"),
    pytest.param({"stdout": '{"a": NaN}'}, {}, "scriptError", id="nan-is-not-json"),
    pytest.param({"stdout": '{"a": -Infinity}'}, {}, "scriptError", id="infinity-is-not-json"),
    pytest.param(
        {"stdout": '{"a": 1, "a": 2}'}, {}, "scriptError", id="duplicate-keys-are-not-one-object"
    ),
    pytest.param(
        {"stdout": "[" * 100_000}, {}, "scriptError", id="deep-nesting-never-fails-mapping"
    ),
    pytest.param(
        {"stdout": '{"a":' * 50_000 + "1" + "}" * 50_000},
        {},
        "scriptError",
        id="deep-objects-never-fail-mapping",
    ),
    pytest.param(
        {"stdout": '{"k": "\\u0000\\u001f"}'}, {}, "success", id="escaped-controls-are-data"
    ),
    pytest.param({"exitCode": 1}, {"detectionState": "success"}, "success", id="override-wins"),
    *(
        pytest.param({}, {"detectionState": value}, value, id=f"override-{value}")
        for value in ("unknown", "success", "fail", "scriptError", "pending", "notApplicable")
    ),
]


@pytest.mark.parametrize(("execution", "top", "expected"), DETECTION_RULES)
def test_detection_state_rules(execution: dict, top: dict, expected: str) -> None:
    assert mapped(report(execution, **top))["detectionState"] == expected


# Graph beta's runState enum as its $metadata declares it (reference/graph-intune.md), written out
# here rather than read from any code: six members, numbered in this order, no unknownFutureValue.
GRAPH_RUN_STATE = {
    "unknown": 0,
    "success": 1,
    "fail": 2,
    "scriptError": 3,
    "pending": 4,
    "notApplicable": 5,
}


def test_detection_states_are_graphs_six_run_states_and_no_others() -> None:
    # Values travel as names; the members keep Graph's order, which is its numbering.
    assert {state.value: n for n, state in enumerate(DetectionState)} == GRAPH_RUN_STATE
    # The Graph emulator, whose schema check the bridge's writes meet in every local test.
    assert {state: n for n, state in enumerate(graph_emulator.RUN_STATES)} == GRAPH_RUN_STATE
    for state in DetectionState:
        body = mapped(report(detectionState=state.value))
        assert graph_emulator.validate_patch_body(body) is None, state


TIME_RULES = [
    pytest.param(
        {"finishedAt": "2026-11-28T02:00:02-08:00"},
        {},
        ("2026-11-28T10:00:02Z", "2026-11-28T18:00:02Z", "2026-11-28T12:00:00Z"),
        id="offset-in-utc-z-out-expected-is-finished-plus-interval-sync-is-receipt",
    ),
    pytest.param(
        {"finishedAt": "2026-11-28T10:00:02.5+00:00"},
        {"nextRunAt": "2026-11-28T14:00:00+01:00", "lastSyncAt": "2026-11-28T09:59:00Z"},
        ("2026-11-28T10:00:02.5Z", "2026-11-28T13:00:00Z", "2026-11-28T09:59:00Z"),
        id="next-run-and-last-sync-are-used-when-given",
    ),
]


@pytest.mark.parametrize(("execution", "top", "expected"), TIME_RULES)
def test_timestamp_rules(execution: dict, top: dict, expected: tuple[str, str, str]) -> None:
    body = mapped(report(execution, **top))
    assert (
        body["lastStateUpdateDateTime"],
        body["expectedStateUpdateDateTime"],
        body["lastSyncDateTime"],
    ) == expected


def test_output_and_error_are_copied_with_trailing_whitespace_trimmed() -> None:
    body = mapped(report({"stdout": '{"a":1}  \r\n', "stderr": "warn: x\n\n", "exitCode": 0}))
    assert body["scriptOutput"] == '{"a":1}'
    assert body["scriptError"] == "warn: x"


def test_timed_out_adds_a_note_to_script_error() -> None:
    assert mapped(report({"timedOut": True, "stderr": "slow\n"}))["scriptError"] == (
        f"slow\n{TIMED_OUT_NOTE}"
    )
    assert mapped(report({"timedOut": True}))["scriptError"] == TIMED_OUT_NOTE


def test_the_timed_out_note_survives_a_cut_of_stderr() -> None:
    body = mapped(report({"timedOut": True, "stderr": "e" * 5000}), limit=1000)
    assert len(body["scriptError"]) <= 1000
    assert body["scriptError"].endswith(TIMED_OUT_NOTE)
    assert TRUNCATION_MARKER in body["scriptError"]


def test_output_over_the_limit_is_cut_to_the_limit_with_a_visible_marker() -> None:
    body = mapped(report({"stdout": "x" * 5000, "stderr": "e" * 5000}), limit=1000)
    for key in ("scriptOutput", "scriptError"):
        assert len(body[key]) == 1000
        assert body[key].endswith(TRUNCATION_MARKER)


def test_output_at_the_limit_is_untouched() -> None:
    assert cap_output("y" * 1000, 1000) == "y" * 1000


def test_default_output_limit_is_intunes_one_mebichar() -> None:
    body = mapped(report({"stdout": "z" * 1_048_577}))
    assert len(body["scriptOutput"]) == 1_048_576
    assert body["scriptOutput"].endswith(TRUNCATION_MARKER)


def test_state_form_is_completed_to_all_six_properties() -> None:
    rep = report(
        state={
            "@odata.type": "#microsoft.graph.deviceComplianceScriptDeviceState",
            "detectionState": "fail",
            "lastStateUpdateDateTime": "2026-11-28T01:00:00-05:00",
        }
    )
    assert mapped(rep) == {
        "@odata.type": "#microsoft.graph.deviceComplianceScriptDeviceState",
        "detectionState": "fail",
        "lastStateUpdateDateTime": "2026-11-28T06:00:00Z",
        "expectedStateUpdateDateTime": "2026-11-28T14:00:00Z",
        "lastSyncDateTime": "2026-11-28T12:00:00Z",
        "scriptOutput": "",
        "scriptError": "",
    }


def test_patch_body_is_exactly_odata_type_and_six_writable_properties_never_id() -> None:
    assert set(mapped(report())) == {
        "@odata.type",
        "detectionState",
        "lastStateUpdateDateTime",
        "expectedStateUpdateDateTime",
        "lastSyncDateTime",
        "scriptOutput",
        "scriptError",
    }
