"""The README's promises: its run command, its example request, and its settings table."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import pytest
import requests

from shared.settings import Settings, SettingsError
from tests.stack import ROOT, Process, start_process, wait_for

README = (ROOT / "README.md").read_text()
UP = ["up", "--port", "0", "--graph-port", "0", "--identity-port", "0", "--storage-port", "0"]
UP += ["--logs-port", "0"]
# Settings starts only with storage; the table's other defaults are read beside it.
STORAGE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}


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


# Rows whose default comes from elsewhere (the cloud, the local stack, the account, a setting):
# Settings leaves each of them unset and derives it.
DERIVED = {
    "GRAPH_BASE_URL",
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__clientId",
}


def settings_table() -> dict[str, str]:
    """The README's settings table: each setting named in a row, with that row's default cell."""
    head = README.index("| setting | default | meaning |\n|---|---|---|\n")
    rows = re.findall(r"^\| (.+?) \| (.+?) \| .* \|$", README[head:].split("\n\n")[0], re.M)
    return {name: default for names, default in rows for name in re.findall(r"`(\w+)`", names)}


def test_every_setting_is_in_the_readme_table_with_its_actual_default() -> None:
    table = settings_table()
    aliases = {field.alias for field in Settings.model_fields.values()}
    assert aliases <= set(table), sorted(aliases - set(table))
    unset = Settings.from_env(STORAGE)
    wrong = {}
    for name, field in Settings.model_fields.items():
        alias, documented = str(field.alias), table[str(field.alias)]
        default = field.get_default(call_default_factory=True)
        literal = re.fullmatch(r"`([^`]+)`", documented)
        if literal and literal.group(1) not in aliases:
            try:
                value = getattr(Settings.from_env({**STORAGE, alias: literal.group(1)}), name)
            except SettingsError as exc:
                value = exc
            if value != getattr(unset, name):
                wrong[alias] = f"{documented}, but unset it is {getattr(unset, name)!r}"
        elif documented.startswith("unset") or alias in DERIVED:
            if default not in (None, (), frozenset(), {}):
                wrong[alias] = f"{documented}, but unset it is {default!r}"
        else:
            wrong[alias] = f"{documented}: neither a value, unset, nor derived"
    assert wrong == {}
