"""The benchmarks still run: tiny sizes, bridge side only (the SDK venv is never needed here)."""

from __future__ import annotations

import subprocess
import sys

from bench.throttle import waits_after_429
from tests.stack import ROOT


def bench(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_client_cost_runs_the_bridge_client_against_the_emulator() -> None:
    out = bench("bench.client_cost", "--n", "10", "--warmup", "2", "--rounds", "1", "--no-sdk")
    assert "round 1 bridge: 10/10 delivered" in out


def test_waits_after_429_pairs_each_throttled_call_with_its_retry() -> None:
    log = [
        {"method": "PATCH", "path": "/a", "status": 429, "time": "2026-11-28T10:00:00.000000Z"},
        {"method": "PATCH", "path": "/b", "status": 200, "time": "2026-11-28T10:00:01.000000Z"},
        {"method": "PATCH", "path": "/a", "status": 200, "time": "2026-11-28T10:00:02.500000Z"},
    ]
    assert waits_after_429(log) == [2.5]
