"""`python -m shared doctor` as an operator runs it: a process with the app's settings, against
the identity and Graph emulators and Azurite, all green first, then each refusal named."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from shared.checks import token_claims
from shared.doctor_graph import PROBE_DEVICE_ID, REQUIRED_ROLE
from tests.conftest import IDENTITY_HEADER
from tests.stack import ROOT, SCRIPT, Emulator, LogsEmulator, StorageView, host_env

ROUTE_REFUSED = {
    "status": 400,
    "code": "No method match route template",
    "match": "deviceRunStates",
    "methods": ["GET", "PATCH"],
}
_LINE = re.compile(r"^(PASS|WARN|FAIL)  (\S+(?: \S+)?)\s+(.*)$")


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def checks(self) -> list[tuple[str, str, str]]:
        """(verdict, name, reason) for each check line."""
        matches = (_LINE.match(line) for line in self.out.splitlines())
        return [(m[1], m[2], m[3]) for m in matches if m]

    def verdicts(self, name: str) -> list[str]:
        return [verdict for verdict, check, _ in self.checks if check == name]

    def reason(self, verdict: str, name: str) -> str:
        found = [reason for v, check, reason in self.checks if (v, check) == (verdict, name)]
        assert found, f"no {verdict} {name} in:\n{self.out}"
        return found[0]


def doctor(env: dict[str, str], *args: str) -> Run:
    """The command exactly as documented, in its own process."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("BRIDGE_", "AzureWebJobs", "GRAPH_", "IDENTITY_", "AZURE_", "WEBSITE_")
        )
    }
    done = subprocess.run(
        [sys.executable, "-m", "shared", "doctor", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    run = Run(done.returncode, done.stdout, done.stderr)
    # The token is decoded to read its roles, never printed (every JWT opens with `eyJ`).
    assert "eyJ" not in run.out + run.err
    return run


@pytest.fixture
def queue_env(emulators: tuple[Emulator, Emulator], storage: StorageView) -> dict[str, str]:
    """What the host gets in queue mode (tests/stack.py host_env), on Azurite."""
    graph, identity = emulators
    return host_env(
        graph.url,
        identity.url,
        IDENTITY_HEADER,
        BRIDGE_DELIVERY_MODE="queue",
        AzureWebJobsStorage=storage.connection_string,
        BRIDGE_ALLOWED_SCRIPT_IDS=SCRIPT,
    )


def test_all_green_against_the_emulators(
    queue_env: dict[str, str], emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    run = doctor(queue_env)
    assert run.code == 0, run.out + run.err
    assert {verdict for verdict, _, _ in run.checks} == {"PASS"}, run.out
    names = [name for _, name, _ in run.checks]
    assert names == [
        "settings",
        "credential",
        "telemetry",
        "token",
        "script",
        "run-state route",
        "storage",
    ]
    assert REQUIRED_ROLE in run.reason("PASS", "token")
    assert SCRIPT in run.reason("PASS", "script")
    assert "compliance-results" in run.reason("PASS", "storage")
    assert run.out.splitlines()[-1].startswith("doctor: PASS (0 FAIL, 0 WARN, 7 PASS)")
    # Reads only: without --probe-write nothing is written to Graph.
    methods = {r["method"] for r in graph.requests()}
    assert methods == {"GET"}
    assert graph.states() == []


def test_probe_write_patches_the_marked_test_device_only(
    queue_env: dict[str, str], emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    run = doctor(queue_env, "--probe-write")
    assert run.code == 0, run.out
    assert PROBE_DEVICE_ID in run.reason("PASS", "write probe")
    [state] = graph.states()
    assert state["runStateId"] == f"{SCRIPT}:{PROBE_DEVICE_ID}"
    assert "python -m shared doctor --probe-write" in state["scriptOutput"]
    assert state["detectionState"] == "unknown"


def test_names_the_missing_role(
    queue_env: dict[str, str], emulators: tuple[Emulator, Emulator]
) -> None:
    _, identity = emulators
    identity.post("config", {"roles": []})
    run = doctor(queue_env)
    assert run.code == 1
    reason = run.reason("FAIL", "token")
    assert f"lacks {REQUIRED_ROLE}" in reason and "roles: none" in reason
    assert "grant-graph-permission.sh" in run.out  # what to do, with the principal id filled in
    assert "<principal-id>" not in run.out
    assert "403" in run.reason("FAIL", "script")
    assert run.out.splitlines()[-1].startswith("doctor: FAIL")
    as_json = json.loads(doctor(queue_env, "--json").out)
    assert as_json["verdict"] == "FAIL"
    token = next(c for c in as_json["checks"] if c["name"] == "token")
    assert token["verdict"] == "FAIL" and REQUIRED_ROLE in token["reason"] and token["action"]


def test_names_the_unsupported_route(
    queue_env: dict[str, str], emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    graph.post("faults", [ROUTE_REFUSED])
    run = doctor(queue_env, "--probe-write")
    assert run.code == 1
    assert run.verdicts("token") == ["PASS"]
    assert run.verdicts("script") == ["PASS"]
    route = run.reason("FAIL", "run-state route")
    assert "No method match route template" in route and "endpoint_unsupported" in route
    assert "endpoint_unsupported" in run.reason("FAIL", "write probe")
    assert "docs/operations.md" in run.out
    assert graph.states() == []


def test_names_a_script_graph_does_not_have(
    queue_env: dict[str, str], emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    graph.post("config", {"scripts": [str(uuid.uuid4())]})
    run = doctor(queue_env)
    assert run.code == 1
    reason = run.reason("FAIL", "script")
    assert SCRIPT in reason and "404" in reason
    assert run.verdicts("run-state route") == ["WARN"]


def test_script_argument_overrides_the_setting_and_is_checked(queue_env: dict[str, str]) -> None:
    other = str(uuid.uuid4())
    run = doctor(queue_env, "--script", other, "--script", "../etc")
    assert run.code == 1
    assert other in run.reason("PASS", "script")
    assert "not a GUID" in run.reason("FAIL", "script")


def test_no_script_to_probe_is_a_warning(queue_env: dict[str, str]) -> None:
    env = {k: v for k, v in queue_env.items() if k != "BRIDGE_ALLOWED_SCRIPT_IDS"}
    run = doctor(env)
    assert run.code == 0
    assert "BRIDGE_ALLOWED_SCRIPT_IDS" in run.reason("WARN", "script")


def test_each_invalid_setting_is_named(queue_env: dict[str, str]) -> None:
    run = doctor(
        {**queue_env, "BRIDGE_DELIVERY_MODE": "later", "BRIDGE_TELEMETRY_SCRIPT_OUTPUT": "maybe"}
    )
    assert run.code == 1
    failed = [
        reason for verdict, name, reason in run.checks if (verdict, name) == ("FAIL", "settings")
    ]
    assert any(r.startswith("BRIDGE_DELIVERY_MODE:") for r in failed), run.out
    assert any(r.startswith("BRIDGE_TELEMETRY_SCRIPT_OUTPUT:") for r in failed), run.out


def test_no_token_is_a_failure(queue_env: dict[str, str]) -> None:
    run = doctor({**queue_env, "IDENTITY_HEADER": "wrong"})
    assert run.code == 1
    assert "no token for https://graph.microsoft.com/.default" in run.reason("FAIL", "token")
    assert not run.verdicts("script"), "no Graph probe runs without a token"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_storage_unreachable_and_dead_letters(
    queue_env: dict[str, str], storage: StorageView
) -> None:
    storage.storage.enqueue({"report": {}, "reason": "forbidden"}, poison=True)
    run = doctor(queue_env)
    assert run.code == 0
    assert "1 report(s)" in run.reason("WARN", "dead letters")
    port = _closed_port()
    dead = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", queue_env["AzureWebJobsStorage"])
    run = doctor({**queue_env, "AzureWebJobsStorage": dead})
    assert run.code == 1
    assert "could not reach storage" in run.reason("FAIL", "storage")


def test_sync_mode_needs_storage_too(emulators: tuple[Emulator, Emulator]) -> None:
    graph, identity = emulators
    run = doctor(
        host_env(graph.url, identity.url, IDENTITY_HEADER, BRIDGE_ALLOWED_SCRIPT_IDS=SCRIPT)
    )
    assert run.code != 0
    assert "AzureWebJobsStorage" in run.reason("FAIL", "settings")


def test_token_claims_reads_a_payload_without_verifying_it() -> None:
    def part(value: Any) -> str:
        import base64

        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    token = f"{part({'alg': 'none'})}.{part({'roles': [REQUIRED_ROLE]})}.signature"
    assert token_claims(token) == {"roles": [REQUIRED_ROLE]}
    assert token_claims("opaque-token") is None
    assert token_claims("a.%%%.c") is None
    assert token_claims(f"a.{part([1, 2])}.c") is None


def test_the_logs_and_entra_destinations_are_checked_end_to_end(
    queue_env: dict[str, str], emulators: tuple[Emulator, Emulator], logs_emulator: LogsEmulator
) -> None:
    graph, identity = emulators
    logs_emulator.reset()
    graph.post("config", {"autoRegisterDevices": True})
    identity.post(
        "config", {"roles": ["DeviceManagementConfiguration.ReadWrite.All", "Device.ReadWrite.All"]}
    )
    env = {
        **queue_env,
        **logs_emulator.settings(),
        "BRIDGE_DESTINATIONS": "graph,logs,entra",
        "BRIDGE_ENTRA_ATTRIBUTES": f"{SCRIPT}=1",
    }
    device = "0f8fad5b-d9cb-469f-a165-70867728950e"
    run = doctor(env, "--device", device)
    assert run.code == 0, run.out + run.err
    assert "monitor.azure.com" in run.reason("PASS", "logs token")
    assert "empty batch" in run.reason("PASS", "logs rule")
    assert "Device.ReadWrite.All" in run.reason("PASS", "entra role")
    assert device in run.reason("PASS", "entra lookup")
    assert logs_emulator.rows() == []  # the probe stored nothing

    wrong = {**env, "BRIDGE_LOGS_RULE_ID": "dcr-" + "0" * 32}
    run = doctor(wrong, "--device", device)
    assert run.code == 1
    assert "404" in run.reason("FAIL", "logs rule")

    identity.post("config", {"roles": ["DeviceManagementConfiguration.ReadWrite.All"]})
    run = doctor(env)
    assert "lacks Device.ReadWrite.All" in run.reason("FAIL", "entra role")
    assert "no device" in run.reason("WARN", "entra lookup")
    assert "doctor --device" in run.out
