"""Client cost: the same N PATCHes through the bridge's GraphClient and the official Graph SDK.

    python -m bench.client_cost [--n 1000] [--rounds 3] [--no-sdk]

Both clients run as fresh worker processes against one Graph emulator process (no throttling),
in alternating order, round after round; each measures its own wall and CPU time
(time.process_time) over the timed PATCHes only, after a warm-up. The SDK worker runs in
bench/.venv-sdk (`python -m bench.sdk_venv` creates it). Target: bridge CPU per PATCH <= 0.5 x SDK.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench import _stack as s

TARGET = 0.5


def worker_config(graph: s.Proc, n: int, warmup: int, seed: str, **extra: Any) -> dict[str, Any]:
    return {
        "graph_url": f"{graph.url}/beta",
        "token": s.token(),
        "scope": s.SCOPE,
        "script": s.SCRIPT,
        "devices": s.device_ids(n + warmup, seed),
        "body": s.patch_body(),
        "warmup": warmup,
        "mode": "cost",
        **extra,
    }


def run_client(client: str, config: dict[str, Any]) -> dict[str, Any]:
    if client == "bridge":
        return s.run_worker(sys.executable, ["-m", "bench._bridge_client"], config)
    return s.run_worker(s.SDK_PYTHON, ["bench/_sdk_client.py"], config)


def start_graph(write_limit: str = "0") -> s.Proc:
    """The devstack Graph emulator, as the tests run it."""
    return s.start_devstack(
        "graph", {"GRAPH_EMULATOR_WRITE_LIMIT": write_limit, "GRAPH_EMULATOR_FAULTS": "[]"}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client_cost", description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="timed PATCHes per client and round")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-sdk", action="store_true", help="bridge only (no SDK venv needed)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    s.deadline(900)
    s.header("client cost: N PATCHes, bridge GraphClient vs msgraph-beta-sdk")
    clients = ["bridge"]
    if not args.no_sdk:
        if not s.SDK_PYTHON.exists():
            print("bench/.venv-sdk is missing: run `python -m bench.sdk_venv` first (or --no-sdk)")
            return 2
        clients.append("sdk")
    graph = start_graph()
    admin = s.GraphAdmin(graph.url)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
    try:
        for round_no in range(args.rounds):
            order = clients if round_no % 2 == 0 else list(reversed(clients))
            for client in order:
                admin.reset()
                config = worker_config(graph, args.n, args.warmup, f"{client}-{round_no}")
                result = run_client(client, config)
                runs[client].append(result)
                print(
                    f"  round {round_no + 1} {client:6}: {result['delivered']}/{result['n']} "
                    f"delivered, wall {result['wall'] / result['n'] * 1000:.2f} ms/PATCH, "
                    f"CPU {result['cpu'] / result['n'] * 1000:.3f} ms/PATCH"
                )
    finally:
        graph.stop()
    figures: dict[str, Any] = {"n": args.n, "rounds": args.rounds, "machine": s.machine()}
    print(f"\nmedian of {args.rounds} rounds, {args.n} PATCHes each (after {args.warmup} warm-up):")
    print(f"  {'client':8} {'wall ms/PATCH':>14} {'CPU ms/PATCH':>13} {'import s':>9}")
    for client in clients:
        wall = s.median([r["wall"] / r["n"] * 1000 for r in runs[client]])
        cpu = s.median([r["cpu"] / r["n"] * 1000 for r in runs[client]])
        imp = s.median([r["import_seconds"] for r in runs[client]])
        figures[client] = {"wall_ms": wall, "cpu_ms": cpu, "import_s": imp, "runs": runs[client]}
        print(f"  {client:8} {wall:14.3f} {cpu:13.3f} {imp:9.3f}")
    if "sdk" in figures:
        cpu_ratio = figures["bridge"]["cpu_ms"] / figures["sdk"]["cpu_ms"]
        wall_ratio = figures["bridge"]["wall_ms"] / figures["sdk"]["wall_ms"]
        per_round = [
            b["cpu"] / b["n"] / (k["cpu"] / k["n"])
            for b, k in zip(runs["bridge"], runs["sdk"], strict=True)
        ]
        figures |= {"cpu_ratio": cpu_ratio, "wall_ratio": wall_ratio, "per_round": per_round}
        rounds = ", ".join(f"{r:.3f}" for r in per_round)
        print(f"\nCPU per PATCH, bridge / SDK: {cpu_ratio:.3f} (per round: {rounds})")
        print(f"wall per PATCH, bridge / SDK: {wall_ratio:.3f}")
        print(f"target bridge/SDK CPU <= {TARGET}: {s.verdict(cpu_ratio <= TARGET)}")
    s.write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
