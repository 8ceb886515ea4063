"""Examples in the docs run: requests validate, the error example is what the bridge says."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from shared.api import ingest
from shared.models import ComplianceReport
from shared.runtime import Bridge
from shared.settings import Settings
from tests.stack import ROOT, UNREACHABLE_STORAGE

AGENT_API = (ROOT / "docs" / "agent-api.md").read_text()
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def json_blocks(text: str) -> list[dict]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, flags=re.S)]


def test_request_examples_are_valid_reports() -> None:
    requests_ = [block for block in json_blocks(AGENT_API) if "deviceId" in block]
    assert len(requests_) == 2
    for body in requests_:
        ComplianceReport.model_validate(body, context={"now": NOW})


def test_error_example_is_what_the_bridge_answers() -> None:
    [example] = [block for block in json_blocks(AGENT_API) if "errors" in block]
    body = {
        "deviceId": "laptop-42",
        "scriptId": "3c9e7a1d-5b2f-4e8c-a6d4-1f0b9e8c7a25",
        "execution": {"exitCode": 0, "finishedAt": "2026-11-28T10:00:02"},
    }
    bridge = Bridge(
        settings=Settings(BRIDGE_DELIVERY_MODE="sync", AzureWebJobsStorage=UNREACHABLE_STORAGE),
        graph=None,
    )  # type: ignore[arg-type]  # never reached
    response = ingest(
        "POST",
        {"Content-Type": "application/json"},
        json.dumps(body).encode(),
        bridge=bridge,
        now=NOW,
    )
    assert response.body == example


def test_example_report_file_is_valid() -> None:
    body = json.loads((ROOT / "docs" / "examples" / "report.json").read_text())
    ComplianceReport.model_validate(body, context={"now": NOW})
