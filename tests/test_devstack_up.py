"""`python -m devstack up` (what `make run` runs) stops everything it started on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.up import Stack
from tests.stack import ROOT, wait_for

# These test the local stack itself, not the bridge (`pytest -m "not devstack"`).
pytestmark = pytest.mark.devstack

PROC = Path("/proc")
FREE_PORTS = ["--port", "0", "--graph-port", "0", "--identity-port", "0", "--storage-port", "0"]


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a process, or None once it has gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name sits in parentheses and may itself hold spaces or parentheses.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every process below ``root``, by pid, with its start time (to tell a reused pid apart)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            children.setdefault(stat[1], []).append(int(entry.name))
            started[int(entry.name)] = stat[2]
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in started:
            found[pid] = started[pid]
            todo.extend(children.get(pid, []))
    return found


def still_running(family: dict[int, str]) -> list[int]:
    """The recorded processes that are still the same process and not a zombie."""
    running = []
    for pid, started in family.items():
        stat = _stat(pid)
        if stat and stat[2] == started and stat[0] != "Z":
            running.append(pid)
    return running


def command_line(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def stack() -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """`devstack up` on free ports in its own session, as a terminal runs a foreground job."""
    popen = subprocess.Popen(
        [sys.executable, "-m", "devstack", "up", *FREE_PORTS, "--logs-port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    timer = threading.Timer(90, popen.kill)
    timer.start()
    ready: dict[str, Any] = {}
    try:
        assert popen.stdout is not None
        for line in popen.stdout:
            if line.startswith("{") and json.loads(line).get("ready") == "up":
                ready = json.loads(line)
                break
    finally:
        timer.cancel()
    assert ready, "devstack up did not start"
    threading.Thread(target=popen.stdout.read, daemon=True).start()  # keep its pipe drained
    family = descendants(popen.pid)
    yield popen, {**ready, "family": family}
    # Whatever the test found, leave nothing of ours behind: the group, then each recorded pid.
    if popen.poll() is None:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=10)
    for pid in still_running(family):
        os.kill(pid, signal.SIGKILL)


def test_ctrl_c_stops_every_process_devstack_up_started(
    stack: tuple[subprocess.Popen[str], dict[str, Any]],
) -> None:
    popen, ready = stack
    family: dict[int, str] = ready["family"]
    commands = [command_line(pid) for pid in family]
    # Azurite (node) runs under its devstack wrapper: a grandchild, the one that used to linger.
    assert any("azurite" in c and "devstack" not in c for c in commands), commands
    assert sum("-m devstack" in c for c in commands) == 5  # azurite, graph, identity, logs, host
    assert requests.get(f"{ready['logs']}/_emulator/rows", timeout=5).json()["count"] == 0

    # Ctrl-C in a terminal signals the whole foreground process group.
    os.killpg(popen.pid, signal.SIGINT)

    assert popen.wait(timeout=30) == 0
    assert wait_for(lambda: not still_running(family), timeout=10, interval=0.2)


def test_the_stack_passes_the_logs_emulator_to_the_host(
    stack: tuple[subprocess.Popen[str], dict[str, Any]],
) -> None:
    popen, ready = stack
    host = next(pid for pid in ready["family"] if "-m devstack host " in command_line(pid))
    environ = dict(
        item.split("=", 1)
        for item in (PROC / str(host) / "environ").read_bytes().decode().split("\0")
        if "=" in item
    )
    assert environ["BRIDGE_LOGS_ENDPOINT"] == ready["logs"]
    assert environ["BRIDGE_LOGS_RULE_ID"] == ready["logsRuleId"]
    assert environ["BRIDGE_LOGS_STREAM"] == "Custom-IntuneComplianceScriptState_CL"
    assert "Device.ReadWrite.All" in environ["IDENTITY_EMULATOR_ROLES"]
    os.killpg(popen.pid, signal.SIGINT)
    assert popen.wait(timeout=30) == 0


# A part that ignores SIGTERM and has a child that ignores it too: only SIGKILL ends them.
IGNORE_TERM = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
CHILD = IGNORE_TERM + "time.sleep(60)\n"
PARENT = (
    IGNORE_TERM
    + f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {CHILD!r}])\n"
    + "print('ready', flush=True)\ntime.sleep(60)\n"
)


def test_a_part_that_ignores_sigterm_is_killed_with_its_children_after_the_grace() -> None:
    stack = Stack()
    part = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # as Stack.start runs every part
    )
    stack.children.append(part)
    family: dict[int, str] = {}
    try:
        assert part.stdout is not None and part.stdout.readline() == "ready\n"
        family = wait_for(lambda: len(descendants(part.pid)) == 1 and descendants(part.pid))
        family[part.pid] = _stat(part.pid)[2]  # type: ignore[index]

        started = time.monotonic()
        stack.stop(grace=0.5)

        assert 0.5 <= time.monotonic() - started < 5
        assert part.returncode == -signal.SIGKILL
        assert wait_for(lambda: not still_running(family), timeout=5, interval=0.1)
    finally:
        for pid in still_running(family):
            os.kill(pid, signal.SIGKILL)
        if part.poll() is None:
            part.kill()


def test_the_functions_hosts_disabled_switch_keeps_a_queue_trigger_from_running() -> None:
    from devstack import host

    assert not host.disabled("deliver_entra")
    # A fresh interpreter: the app indexes once per process, as the worker does.
    probe = (
        "from devstack import host; server, listeners = host.build_host(0); "
        "print(sorted(item.name for item in listeners))"
    )
    env = {
        **os.environ,
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "AzureWebJobs.deliver_graph.Disabled": "true",
        "AzureWebJobs__deliver_logs__Disabled": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "['deliver_entra']"
