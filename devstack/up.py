"""Start the whole local stack: Azurite, the Graph and identity emulators, the function host.

Each part runs as its own process (as in Azure, the bridge reaches Graph and the identity endpoint
over HTTP), is wired to the others through the same settings Azure uses, and is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
# A fixed client id for the local user-assigned identity, so tokens and logs are recognisable.
LOCAL_CLIENT_ID = "00000000-0000-0000-0000-00000000b71d"
EXAMPLE = "docs/examples/report.json"


def example_command(host_url: str) -> str:
    return (
        f"curl -sS -X POST {host_url}/api/v1/compliance-script-results "
        f"-H 'Content-Type: application/json' --data @{EXAMPLE}"
    )


def _forward(stream: IO[str], prefix: str) -> None:
    for line in stream:
        sys.stderr.write(f"[{prefix}] {line}")


class Stack:
    """The running child processes; `stop()` ends exactly these, by PID."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[str]] = []
        self.ready: dict[str, dict[str, str]] = {}

    def start(self, part: str, port: int, env: dict[str, str]) -> str:
        child = subprocess.Popen(
            [sys.executable, "-m", "devstack", part, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
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

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack up", description=__doc__)
    parser.add_argument("--port", type=int, default=7071, help="function host port")
    parser.add_argument("--graph-port", type=int, default=7072)
    parser.add_argument("--identity-port", type=int, default=7073)
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
        hosts = [
            stack.start("host", args.port + n if args.port else 0, env) for n in range(args.hosts)
        ]
        host = hosts[0]
        ready = {"ready": "up", "host": host, "hosts": hosts, "graph": graph, "identity": identity}
        print(json.dumps(ready))
        print(
            f"\nThe bridge is listening on {host}/api"
            f" (Graph emulator {graph}, identity {identity})."
            f"\nTry it:\n\n  {example_command(host)}\n\nThen read the state back:"
            f"\n\n  curl -sS {graph}/_emulator/states\n\nCtrl-C stops everything.",
            flush=True,
        )
        while not stopping.wait(0.5):
            if any(child.poll() is not None for child in stack.children):
                print("a part of the stack exited; stopping", file=sys.stderr)
                return 1
    finally:
        stack.stop()
    return 0
