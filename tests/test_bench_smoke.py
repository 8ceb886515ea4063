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


def test_fleet_memory_table_keeps_the_table_services_etag_rules() -> None:
    import pytest
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

    from bench.fleet import MemoryTable

    table = MemoryTable()
    table.create_entity({"PartitionKey": "p", "RowKey": "r", "Next": 1.0})
    with pytest.raises(ResourceExistsError):
        table.create_entity({"PartitionKey": "p", "RowKey": "r"})
    row = table.get_entity(partition_key="p", row_key="r")
    table.update_entity(
        {"PartitionKey": "p", "RowKey": "r", "Next": 2.0},
        mode="merge",
        etag=row.metadata["etag"],
        match_condition=MatchConditions.IfNotModified,
    )
    with pytest.raises(ResourceModifiedError):
        table.update_entity(
            {"PartitionKey": "p", "RowKey": "r", "Next": 3.0},
            mode="merge",
            etag=row.metadata["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
    assert table.get_entity(partition_key="p", row_key="r")["Next"] == 2.0


def test_fleet_simulation_keeps_the_budget_and_writes_changes_first() -> None:
    from bench.fleet import Fleet, simulate

    # Refreshes due at 1,000 pairs / 60 s, far over a budget of 2/s: changes must still pass.
    fleet = Fleet(
        devices=1000, scripts=1, interval=60, changes=0.02, days=900 / 86400, rate=2, refresh=30
    )
    result = simulate(fleet)
    assert result["writes"] - result["writes_after_end"] <= 2 * 0.95 * 900 + 1
    # Reserved 5% under the budget; a booked change comes back up to 1 s after its slot (whole
    # second visibility), so written times may bunch by that much, never past the budget.
    assert result["peak_writes_20s"] <= 2 * 20
    # Refreshes that never found free budget before the next report replaced them...
    assert result["outcomes"]["superseded"] + result["outcomes"]["refresh_skipped"] > 1000
    # ...while every change waited at most the refresh lane's horizon (3 s) and a whole second.
    assert result["latency"]["count"] > 100
    assert result["latency"]["max"] <= 3 + 2
    assert result["undelivered_oldest"] <= 3 + 2


def test_fleet_stack_measures_change_latency_as_the_simulation_does() -> None:
    from bench.fleet_stack import change_latencies

    sent = [(0.0, 1, 1), (1.0, 1, 2), (2.0, 1, 2), (3.0, 2, 1)]
    written = [(1.5, 1, 1), (4.0, 1, 2), (5.0, 2, 1)]
    # Pair 1 is behind from 0.0 until the write of its current state at 4.0 (the write at 1.5
    # carried a state already replaced); pair 2 from 3.0 to 5.0.
    assert change_latencies(sent, written) == [4.0, 2.0]


def test_pacing_choose_stops_at_the_first_pace_that_failed() -> None:
    from bench.pacing import choose

    def run(pace: float, throttled: int, peak: int) -> dict[str, float]:
        return {"pace": pace, "throttled": throttled, "peak_20s_window": peak}

    assert choose([run(8, 0, 150), run(9, 0, 171), run(10, 0, 195)]) == 9
    assert choose([run(8, 30, 200), run(9, 0, 174)]) is None
    assert choose([run(8, 0, 150), run(8, 1, 150), run(9, 0, 160)]) is None


def test_storage_calls_counts_this_trees_ingest_and_delivery() -> None:
    out = bench("bench.storage_calls", "--n", "3", "--before", "", timeout=180)
    assert "delivery, first write" in out and "ingest, new pair" in out


def test_fleet_simulation_drains_a_first_contact_at_the_full_budget() -> None:
    from bench.fleet import Fleet, simulate

    # Every pair's first report is a change: 600 pairs at 2/s (1.9 usable) take 316 s at best.
    fleet = Fleet(devices=600, scripts=1, interval=120, days=600 / 86400, rate=2, warm=False)
    result = simulate(fleet)
    assert result["undelivered_changes"] == 0
    assert result["writes"] >= 600
    # One place in the budget's queue per pair: no slot booked by a report its pair replaced
    # goes unwritten.
    assert result["outcomes"]["slots"] - result["writes"] - result["booked_at_end"] == 0
    assert result["outcomes"]["inherited"] > 0
