"""Start the whole local stack: Azurite, the Graph, identity and Logs Ingestion emulators, the host.

Each part runs as its own process (as in Azure, the bridge reaches Graph, Log Analytics and the
identity endpoint over HTTP), is wired to the others through the same settings Azure uses, and is
stopped by its process group: SIGTERM, a grace period, then SIGKILL, so nothing it started
(Azurite's node process included) outlives the stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
# A fixed client id for the local user-assigned identity, so tokens and logs are recognisable.
LOCAL_CLIENT_ID = "00000000-0000-0000-0000-00000000b71d"
EXAMPLE = "docs/examples/report.json"
# Azurite closes its ports on SIGINT but can linger for minutes; SIGTERM stops it at once, and a
# part still running this long after SIGTERM is killed.
STOP_GRACE = 5.0
# Locally the one identity holds both Graph roles the destinations need (graph and entra).
LOCAL_ROLES = "DeviceManagementConfiguration.ReadWrite.All,Device.ReadWrite.All"


def example_command(host_url: str) -> str:
    return (
        f"curl -sS -X POST {host_url}/api/v1/compliance-script-results "
        f"-H 'Content-Type: application/json' --data @{EXAMPLE}"
    )


def read_back_help(host: str, graph: str, logs: str | None) -> str:
    """What `make run` prints: a request to send, and where each destination's result shows."""
    lines = [
        f"\nThe bridge is listening on {host}/api (Graph emulator {graph}).",
        f"Try it:\n\n  {example_command(host)}\n",
        "Then read the run state back (graph destination):"
        f"\n\n  curl -sS {graph}/_emulator/states\n",
    ]
    if logs:
        lines.append(
            f"the Log Analytics rows (logs destination):\n\n  curl -sS {logs}/_emulator/rows\n"
        )
    lines.append(
        "and the devices' extension attributes (entra destination):"
        f"\n\n  curl -sS {graph}/_emulator/devices\n\nCtrl-C stops everything."
    )
    return "\n".join(lines)


def _forward(stream: IO[str], prefix: str) -> None:
    for line in stream:
        sys.stderr.write(f"[{prefix}] {line}")


def _signal_group(child: subprocess.Popen[str], signum: int) -> None:
    """Signal the child's whole process group (it leads its own), grandchildren included."""
    with contextlib.suppress(ProcessLookupError):  # the group has already gone
        os.killpg(child.pid, signum)


class Stack:
    """The running child processes; `stop()` ends exactly these and what they started."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[str]] = []
        self.ready: dict[str, dict[str, Any]] = {}

    def start(self, part: str, port: int, env: dict[str, str]) -> str:
        child = subprocess.Popen(
            [sys.executable, "-m", "devstack", part, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            # Its own process group: a terminal's Ctrl-C reaches only `up`, which then stops the
            # parts in order, and a part's own children can be signalled with it.
            start_new_session=True,
        )
        self.children.append(child)
        line = child.stdout.readline() if child.stdout else ""
        try:
            ready = json.loads(line)
        except ValueError:
            raise RuntimeError(f"{part} did not start (exit code {child.poll()})") from None
        threading.Thread(target=_forward, args=(child.stdout, part), daemon=True).start()
        self.ready[part] = ready
        return ready["url"]

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every part's group, wait up to ``grace`` seconds, then SIGKILL what is left."""
        for child in reversed(self.children):
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(deadline - time.monotonic(), 0.01))
        # Also for a part that exited in time: something it started may linger in its group.
        for child in self.children:
            _signal_group(child, signal.SIGKILL)
            child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack up", description=__doc__)
    parser.add_argument("--port", type=int, default=7071, help="function host port")
    parser.add_argument("--graph-port", type=int, default=7072)
    parser.add_argument("--identity-port", type=int, default=7073)
    parser.add_argument("--logs-port", type=int, default=7074, help="Logs Ingestion emulator")
    parser.add_argument(
        "--no-logs", action="store_true", help="do not start the Logs Ingestion emulator"
    )
    parser.add_argument(
        "--storage-port", type=int, default=10000, help="Azurite blob port (queue +1, table +2)"
    )
    parser.add_argument(
        "--hosts",
        type=int,
        default=1,
        help="function host processes competing for one queue, as scaled-out instances do",
    )
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env.setdefault("IDENTITY_HEADER", secrets.token_urlsafe(24))
    env.setdefault("AZURE_CLIENT_ID", LOCAL_CLIENT_ID)
    env.setdefault("IDENTITY_EMULATOR_ROLES", LOCAL_ROLES)
    # Any managedDevice the bridge looks up exists, so the entra destination works without setup.
    env.setdefault("GRAPH_EMULATOR_AUTO_DEVICES", "1")
    stack = Stack()
    stopping = threading.Event()
    # Set explicitly: a shell that starts us in the background leaves SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        if "AzureWebJobsStorage" not in env:
            stack.start("azurite", args.storage_port, env)
            env["AzureWebJobsStorage"] = stack.ready["azurite"]["connectionString"]
        graph = stack.start("graph", args.graph_port, env)
        identity = stack.start("identity", args.identity_port, env)
        env["GRAPH_BASE_URL"] = f"{graph}/beta"
        env["IDENTITY_ENDPOINT"] = f"{identity}/msi/token"
        ready: dict[str, Any] = {"ready": "up", "graph": graph, "identity": identity}
        if not args.no_logs:
            logs = stack.start("logs", args.logs_port, env)
            env["BRIDGE_LOGS_ENDPOINT"] = logs
            env["BRIDGE_LOGS_RULE_ID"] = stack.ready["logs"]["ruleId"]
            env["BRIDGE_LOGS_STREAM"] = stack.ready["logs"]["streams"][0]
            ready |= {
                "logs": logs,
                "logsRuleId": env["BRIDGE_LOGS_RULE_ID"],
                "logsStream": env["BRIDGE_LOGS_STREAM"],
            }
        hosts = [
            stack.start("host", args.port + n if args.port else 0, env) for n in range(args.hosts)
        ]
        host = hosts[0]
        ready |= {"host": host, "hosts": hosts}
        print(json.dumps(ready))
        print(read_back_help(host, graph, ready.get("logs")), flush=True)
        while not stopping.wait(0.5):
            if any(child.poll() is not None for child in stack.children):
                print("a part of the stack exited; stopping", file=sys.stderr)
                return 1
    finally:
        stack.stop()
    return 0
