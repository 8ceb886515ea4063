"""Coalescing: 200 devices each report 5 newer versions before delivery catches up.

    python -m bench.coalescing [--devices 200] [--versions 5]

Reports arrive over HTTP, version after version (every device's version 1, then every device's
version 2, ...), from 8 client threads, to a local function host in queue mode (default pace,
8 writes/s). Two phases, each with its own devices:

- backlog: the reports arrive while delivery is not running (an HTTP-only host takes them), then
  the delivering host starts: all 5 versions are queued before delivery catches up. This is the
  issue's scenario; target <= 0.3 Graph writes per accepted report (0.2 is the floor).
- live: the delivering host runs while the reports arrive, so whatever it reaches before a newer
  version arrives is written. Informational: the figure depends on this machine's arrival rate
  against the pace.

After each phase: Graph writes per accepted report and whether Graph holds every device's newest
version.
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import _load
from bench import _stack as s
from bench.client_cost import start_graph

TARGET = 0.3


def send_versions(
    url: str, devices: list[str], versions: int, concurrency: int
) -> tuple[Counter, dict[str, float], float]:
    base = datetime.now(UTC) - timedelta(hours=1)
    statuses: Counter[int] = Counter()
    newest: dict[str, float] = {}
    started = time.perf_counter()
    for version in range(1, versions + 1):
        finished = base + timedelta(minutes=version)
        reports = [s.report(d, finished, exit_code=version % 2) for d in devices]
        statuses.update(_load.post_http(url, reports, concurrency).statuses)
        newest = dict.fromkeys(devices, finished.timestamp())
    return statuses, newest, time.perf_counter() - started


def newest_count(admin: s.GraphAdmin, newest: dict[str, float]) -> int:
    states = {
        st["runStateId"].split(":")[1]: st["lastStateUpdateDateTime"]
        for st in admin.states()
        if st["runStateId"].startswith(s.SCRIPT)
    }
    return sum(1 for d, when in newest.items() if d in states and s.parse_time(states[d]) == when)


def wait_drained(admin: s.GraphAdmin, bridge: Any, newest: dict[str, float], budget: float) -> int:
    deadline = time.monotonic() + budget
    while True:
        current = newest_count(admin, newest)
        if (current == len(newest) and _load.queued(bridge) == 0) or time.monotonic() > deadline:
            return current
        time.sleep(1)


def phase(name: str, args: argparse.Namespace, stack: dict[str, Any]) -> dict[str, Any]:
    admin: s.GraphAdmin = stack["admin"]
    admin.reset()
    _load.clear_storage(stack["bridge"])
    devices = s.device_ids(args.devices, f"coalesce-{name}-{time.time()}")
    total = args.devices * args.versions
    budget = 60 + total / 8 * 1.5
    if name == "backlog":
        ingest_host = s.start_module(
            "bench._ingest_host", ["--port", "0"], stack["env"], "ingest-host"
        )
        try:
            statuses, newest, seconds = send_versions(
                ingest_host.url, devices, args.versions, args.concurrency
            )
        finally:
            ingest_host.stop()
        host = s.start_devstack("host", stack["env"], "host-coalescing")
    else:
        host = s.start_devstack("host", stack["env"], "host-coalescing")
        statuses, newest, seconds = send_versions(
            host.url, devices, args.versions, args.concurrency
        )
    try:
        during = sum(1 for e in admin.requests() if e["method"] == "PATCH")
        current = wait_drained(admin, stack["bridge"], newest, budget)
    finally:
        host.stop()
    patches = [e for e in admin.requests() if e["method"] == "PATCH"]
    writes = sum(1 for e in patches if e["status"] == 200)
    accepted = statuses.get(202, 0)
    result = {
        "phase": name,
        "reports": total,
        "answers": dict(statuses),
        "accepted": accepted,
        "arrival_seconds": seconds,
        "arrival_rate": total / seconds,
        "writes_while_arriving": during,
        "graph_writes": writes,
        "graph_calls": len(patches),
        "writes_per_report": writes / accepted if accepted else float("nan"),
        "devices_newest": current,
        "devices": args.devices,
    }
    print(
        f"  {name:8}: {accepted}/{total} accepted ({dict(statuses)}) at "
        f"{result['arrival_rate']:.0f} reports/s; {during} Graph writes while they arrived, "
        f"{writes} in all ({len(patches)} calls) = {result['writes_per_report']:.3f} per report; "
        f"newest version in Graph for {current}/{args.devices} devices",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coalescing", description=__doc__)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--phases", default="backlog,live")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    total = args.devices * args.versions
    s.deadline(300 + 2 * (total / 8 * 1.5 + total / 10))
    s.header(f"coalescing: {args.devices} devices x {args.versions} versions = {total} reports")
    header = secrets.token_urlsafe(16)
    azurite, storage = s.start_azurite()
    graph = start_graph()
    identity = s.start_identity(header)
    stack = {
        "admin": s.GraphAdmin(graph.url),
        "bridge": _load.queue_bridge(storage),
        "env": s.bridge_env(graph, identity, header, storage),
    }
    stack["bridge"].storage.ensure()
    try:
        results = [phase(name, args, stack) for name in args.phases.split(",") if name]
    finally:
        for proc in (identity, graph, azurite):
            proc.stop()
    print(f"\n  floor: {1 / args.versions:.3f} writes per report (one per device)")
    for r in results:
        ok = r["writes_per_report"] <= TARGET
        newest = r["devices_newest"] == r["devices"]
        target = f"target <= {TARGET}: {s.verdict(ok)}" if r["phase"] == "backlog" else "info"
        print(
            f"  {r['phase']:8}: {r['writes_per_report']:.3f} writes/report ({target}); "
            f"newest state for every device: {s.verdict(newest)}"
        )
    s.write_json(args.json, {"results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
