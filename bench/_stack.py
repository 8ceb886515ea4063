"""Plumbing shared by the benchmarks: local processes on 127.0.0.1, stopped by PID, and metrics.

Everything a benchmark starts is recorded here and ended by its own PID (never by name), also when
the benchmark fails or hits its deadline. Process CPU and memory come from /proc (Linux).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SDK_VENV = BENCH / ".venv-sdk"
SDK_PYTHON = SDK_VENV / "bin" / "python"
SCRIPT = "3c9e7a1d-5b2f-4e8c-a6d4-1f0b9e8c7a25"
CLIENT_ID = "00000000-0000-0000-0000-00000000b71d"
AUDIENCE = "https://graph.microsoft.com"
SCOPE = f"{AUDIENCE}/.default"
INGEST = "/api/v1/compliance-script-results"
WRITE_ROLE = "DeviceManagementConfiguration.ReadWrite.All"
READY_TIMEOUT = 60
CLK_TCK = os.sysconf("SC_CLK_TCK")

_children: list[subprocess.Popen[Any]] = []
# Children's logs; removed at exit unless BENCH_KEEP_LOGS is set.
_workdir = Path(tempfile.mkdtemp(prefix="bridge-bench-"))


# ---- processes --------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process this benchmark started; `stop()` ends it by its PID."""

    popen: subprocess.Popen[Any]
    url: str = ""
    ready: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        stop_process(self.popen)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stop_process(popen: subprocess.Popen[Any]) -> None:
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=5)
    with contextlib.suppress(ValueError):
        _children.remove(popen)


def stop_all() -> None:
    """End every child this process started and that still runs, newest first, by PID."""
    for popen in list(reversed(_children)):
        with contextlib.suppress(Exception):
            stop_process(popen)


def _cleanup() -> None:
    stop_all()
    if not os.environ.get("BENCH_KEEP_LOGS"):  # set it to keep the children's logs
        shutil.rmtree(_workdir, ignore_errors=True)


atexit.register(_cleanup)


def deadline(seconds: float) -> None:
    """Stop the whole benchmark (and its children) if it runs longer than `seconds`."""

    def expired(*_: object) -> None:
        stop_all()
        print(f"\nbenchmark deadline of {seconds:.0f} s reached: stopped", file=sys.stderr)
        os._exit(3)

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(int(seconds))

    def interrupted(*_: object) -> None:
        stop_all()
        os._exit(130)

    signal.signal(signal.SIGTERM, interrupted)


def start_devstack(part: str, env: dict[str, str] | None = None, name: str = "") -> Proc:
    """`python -m devstack <part> --port 0`, waiting for its JSON ready line; stderr to a file."""
    return start_module("devstack", [part, "--port", "0"], env, name or part)


def start_module(module: str, args: list[str], env: dict[str, str] | None, name: str) -> Proc:
    log_path = _workdir / f"{name}-{uuid.uuid4().hex[:6]}.log"
    log = log_path.open("w")
    popen = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    _children.append(popen)
    timer = threading.Timer(READY_TIMEOUT, popen.kill)
    timer.start()
    ready: dict[str, Any] = {}
    try:
        for line in popen.stdout:  # type: ignore[union-attr]
            with contextlib.suppress(ValueError):
                ready = json.loads(line)
            if isinstance(ready, dict) and "ready" in ready:
                break
    finally:
        timer.cancel()
    if not ready:
        stop_process(popen)
        raise RuntimeError(f"{module} {args} did not start:\n{log_path.read_text()[-3000:]}")
    # Keep stdout drained so the child never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in popen.stdout], daemon=True).start()  # type: ignore[union-attr]
    return Proc(popen, ready.get("url", ""), ready, log_path)


def start_azurite() -> tuple[Proc, str]:
    from devstack import azurite

    server = azurite.start()
    _children.append(server.process)
    return Proc(server.process), server.connection_string


def start_graph(write_limit: str = "0", **env: str) -> Proc:
    return start_devstack(
        "graph",
        {
            "GRAPH_EMULATOR_WRITE_LIMIT": write_limit,
            "GRAPH_EMULATOR_FAULTS": "[]",
            "GRAPH_EMULATOR_SCRIPTS": "",
            **env,
        },
    )


def start_identity(header: str) -> Proc:
    return start_devstack("identity", {"IDENTITY_HEADER": header})


def bridge_env(
    graph: Proc, identity: Proc, header: str, storage: str | None, **settings: str
) -> dict[str, str]:
    """The settings Azure would give the app, pointed at the local emulators."""
    env = {
        "GRAPH_BASE_URL": f"{graph.url}/beta",
        "IDENTITY_ENDPOINT": f"{identity.url}/msi/token",
        "IDENTITY_HEADER": header,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "BRIDGE_DELIVERY_MODE": "queue",
        **settings,
    }
    if storage:
        env["AzureWebJobsStorage"] = storage
    return env


# ---- the Graph emulator's admin API -----------------------------------------------------------


class GraphAdmin:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()

    def reset(self) -> None:
        self.http.post(f"{self.url}/_emulator/reset", timeout=10).raise_for_status()

    def faults(self, rules: list[dict[str, Any]]) -> None:
        self.http.post(f"{self.url}/_emulator/faults", json=rules, timeout=10).raise_for_status()

    def config(self, **body: Any) -> None:
        self.http.post(f"{self.url}/_emulator/config", json=body, timeout=10).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        response = self.http.get(f"{self.url}/_emulator/requests", timeout=60)
        response.raise_for_status()
        return response.json()["requests"]

    def states(self) -> list[dict[str, Any]]:
        response = self.http.get(f"{self.url}/_emulator/states", timeout=60)
        response.raise_for_status()
        return response.json()["states"]


def token(lifetime: int = 3600) -> str:
    from devstack import tokens

    return tokens.issue(AUDIENCE, CLIENT_ID, [WRITE_ROLE], lifetime)[0]


# ---- /proc metrics ----------------------------------------------------------------------------


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU of a process (and its waited-for children) from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")": state is field 3, so utime (14) is index 11, stime 12, cutime 13, cstime 14.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak resident set) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class RssSampler:
    """Samples a process's RSS every `interval` s; VmHWM gives the true peak between samples."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.samples.append(memory_kib(self.pid)["VmRSS"])
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---- reports ----------------------------------------------------------------------------------


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def device_ids(count: int, seed: str = "bench") -> list[str]:
    """Stable, distinct device GUIDs."""
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, f"intune-bridge-{seed}")
    return [str(uuid.uuid5(namespace, str(i))) for i in range(count)]


def report(device_id: str, finished: datetime, exit_code: int = 0, **extra: Any) -> dict[str, Any]:
    """An agent's report as the agent API defines it (a realistic small Windows payload)."""
    return {
        "deviceId": device_id,
        "scriptId": SCRIPT,
        "execution": {
            "exitCode": exit_code,
            "stdout": '{"BitLocker":"On","SecureBoot":"Enabled","FirewallProfiles":3}',
            "stderr": "",
            "startedAt": utc_text(finished - timedelta(seconds=2)),
            "finishedAt": utc_text(finished),
            "timedOut": False,
        },
        **extra,
    }


def patch_body(i: int = 0) -> dict[str, Any]:
    """One mapped PATCH body, as the bridge would send it."""
    now = datetime.now(UTC) - timedelta(minutes=5, seconds=i % 60)
    return {
        "@odata.type": "#microsoft.graph.deviceComplianceScriptDeviceState",
        "detectionState": "success",
        "lastStateUpdateDateTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expectedStateUpdateDateTime": (now + timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastSyncDateTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "scriptOutput": '{"BitLocker":"On","SecureBoot":"Enabled","FirewallProfiles":3}',
        "scriptError": "",
    }


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---- output -----------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{platform.node()}: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load[0]:.2f} at start"
    )


def code_fingerprint() -> str:
    """Which product code was measured (git is not consulted): a hash of shared/ and the app."""
    import hashlib

    files = [*sorted((ROOT / "shared").glob("*.py")), ROOT / "function_app.py", ROOT / "host.json"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    newest = max(path.stat().st_mtime for path in files)
    changed = datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%d %H:%M UTC")
    names = "shared/*.py, function_app.py, host.json"
    return f"sha256 {digest.hexdigest()[:12]} of {names} (newest file {changed})"


def header(title: str) -> None:
    print(f"== {title}")
    print(f"machine: {machine()}")
    print(f"code: {code_fingerprint()}")
    print(f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}")


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    yield out
    out["wall"] = time.perf_counter() - wall
    out["cpu"] = time.process_time() - cpu


def run_worker(python: str | Path, args: list[str], config: dict[str, Any]) -> Any:
    """Run a worker in a fresh process; it reads its config on stdin and prints one JSON line."""
    popen = subprocess.Popen(
        [str(python), *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _children.append(popen)
    try:
        stdout, stderr = popen.communicate(json.dumps(config), timeout=config.get("timeout", 600))
    finally:
        stop_process(popen)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if popen.returncode != 0 or not lines:
        raise RuntimeError(f"worker {args} failed ({popen.returncode}):\n{stderr[-4000:]}")
    return json.loads(lines[-1])
