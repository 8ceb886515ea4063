"""The README's promises: its run command, its example request, and its settings table."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import pytest
import requests

from shared.settings import Settings
from tests.stack import ROOT, Process, start_process, wait_for

README = (ROOT / "README.md").read_text()
UP = ["up", "--port", "0", "--graph-port", "0", "--identity-port", "0", "--storage-port", "0"]
UP += ["--logs-port", "0"]


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.S)


@pytest.fixture
def stack() -> Iterator[Process]:
    """`python -m devstack up`, as `make run` starts it, on ephemeral ports."""
    process = start_process(UP)
    yield process
    process.stop()


def test_make_run_starts_the_stack_the_readme_describes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: install\n\t\$\(BIN\)/python -m devstack up$", makefile, re.M)
    assert "| `make run` |" in README
    assert "| `make test` |" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_example_request_is_queued_then_readable_from_the_emulator(stack: Process) -> None:
    send, read_back = shell_blocks()[:2]
    send = send.replace("http://127.0.0.1:7071", stack.ready["host"])
    read_back = read_back.replace("http://127.0.0.1:7072", stack.ready["graph"])

    def run(command: str) -> dict:
        done = subprocess.run(
            ["sh", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
        )
        return json.loads(done.stdout)

    assert run(send) == {"reportId": "example-0001", "status": "queued"}
    [state] = wait_for(lambda: run(read_back)["states"])
    assert state["detectionState"] == "success"
    assert state["lastStateUpdateDateTime"] == "2026-11-28T10:00:02Z"
    assert state["scriptOutput"] == '{"BitLocker":"On","FirewallEnabled":true}'
    assert run(send) == {"reportId": "example-0001", "status": "ignored", "reason": "duplicate"}
    stack.stop()
    assert stack.popen.returncode == 0


def test_sync_mode_answers_with_graphs_outcome() -> None:
    process = start_process(
        UP,
        {"BRIDGE_DELIVERY_MODE": "sync"},
    )
    try:
        body = (ROOT / "docs" / "examples" / "report.json").read_bytes()
        response = requests.post(
            process.ready["host"] + "/api/v1/compliance-script-results",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        assert response.status_code == 200
        assert response.json()["status"] == "delivered"
    finally:
        process.stop()


def test_every_setting_is_in_the_readme_table() -> None:
    first_cells = re.findall(r"^\| ([^|]+) \|", README, flags=re.M)
    table = {name for cell in first_cells for name in re.findall(r"`([A-Za-z_]+)`", cell)}
    aliases = {field.alias for field in Settings.model_fields.values()}
    assert aliases <= table, sorted(aliases - table)
