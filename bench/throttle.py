"""Throttle behaviour: N PATCHes while Graph answers a share of them 429 `Retry-After: 2.128`.

    python -m bench.throttle [--n 40] [--probability 0.2] [--no-sdk]

The Graph emulator injects the 429 with a fault rule (probability per request). The bridge runs
its sync-mode retry rule (that of shared.delivery.Delivery.deliver_now, with the default
BRIDGE_SYNC_ATTEMPTS=3 and BRIDGE_SYNC_MAX_WAIT), and again with 4 attempts; the SDK its own
retry handler with defaults (3 retries = 4 attempts). In queue mode the bridge never gives up
this early: a throttled report is re-enqueued with the Retry-After as its visibility delay. From
the emulator's
request log: how many reports of N each client delivered, how many 429s it was given, and how long
it actually waited after each 429 (anything under 2.128 s retries too early).
"""

from __future__ import annotations

import argparse
import itertools
from collections import defaultdict
from typing import Any

from bench import _stack as s
from bench.client_cost import run_client, start_graph, worker_config

RETRY_AFTER = "2.128"


def waits_after_429(log: list[dict[str, Any]]) -> list[float]:
    """Seconds between each 429 and the next request for the same run state."""
    by_path: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in log:
        if entry["method"] == "PATCH":
            by_path[entry["path"]].append(entry)
    waits = []
    for entries in by_path.values():
        for before, after in itertools.pairwise(entries):
            if before["status"] == 429:
                waits.append(s.parse_time(after["time"]) - s.parse_time(before["time"]))
    return waits


def main(argv: list[str] | None = None) -> int:
    from shared.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m bench.throttle", description=__doc__)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--probability", type=float, default=0.2)
    parser.add_argument("--no-sdk", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    s.deadline(600)
    s.header(f"throttle: {args.n} PATCHes, {args.probability:.0%} answered 429 Retry-After 2.128")
    defaults = Settings(BRIDGE_DELIVERY_MODE="sync")
    attempts, max_wait = defaults.sync_attempts, defaults.sync_max_wait.total_seconds()
    print(
        f"bridge: sync-mode retry with BRIDGE_SYNC_ATTEMPTS={attempts}, "
        f"BRIDGE_SYNC_MAX_WAIT={max_wait:g}s; SDK: default RetryHandler (3 retries)"
    )
    # (label, worker, attempts): the product's sync default, then as many attempts as the SDK's
    # 1 + 3 retries, so the two retry policies are compared at the same number of tries.
    variants = [("bridge", "bridge", attempts), ("bridge-4", "bridge", 4)]
    if not args.no_sdk and s.SDK_PYTHON.exists():
        variants.append(("sdk", "sdk", 4))
    rule = {
        "status": 429,
        "retryAfter": RETRY_AFTER,
        "probability": args.probability,
        "methods": ["PATCH"],
    }
    graph = start_graph()
    admin = s.GraphAdmin(graph.url)
    figures: dict[str, Any] = {"n": args.n, "probability": args.probability}
    try:
        for label, client, tries in variants:
            admin.reset()
            admin.faults([rule])
            config = worker_config(
                graph, args.n, 0, f"throttle-{label}", mode="throttle",
                attempts=tries, max_wait=max_wait, timeout=300,
            )  # fmt: skip
            result = run_client(client, config)
            log = admin.requests()
            patches = [e for e in log if e["method"] == "PATCH"]
            throttled = sum(1 for e in patches if e["status"] == 429)
            waits = waits_after_429(log)
            early = sum(1 for w in waits if w < float(RETRY_AFTER))
            figures[label] = {
                "delivered": result["delivered"],
                "graph_calls": len(patches),
                "throttled": throttled,
                "waits": waits,
                "early_retries": early,
                "wall": result["wall"],
                "errors": result["errors"],
            }
            wait_text = (
                f"waited {min(waits):.2f}-{max(waits):.2f} s (median {s.median(waits):.2f})"
                if waits
                else "no retries"
            )
            print(
                f"  {label:8}: delivered {result['delivered']}/{result['n']}, "
                f"{len(patches)} Graph calls, {throttled} answered 429; after a 429 it "
                f"{wait_text}; {early} retries before Retry-After; wall {result['wall']:.1f} s"
            )
            for reason, count in result["errors"].items():
                print(f"            not delivered: {count} x {reason}")
    finally:
        graph.stop()
    if "sdk" in figures:
        k = figures["sdk"]
        for label in ("bridge", "bridge-4"):
            b = figures[label]
            print(
                f"{label:8} vs SDK: delivered {b['delivered']} vs {k['delivered']} of {args.n} "
                f"(ratio {b['delivered'] / max(k['delivered'], 1):.2f}); median wait after a 429 "
                f"{s.median(b['waits']):.2f} s vs {s.median(k['waits']):.2f} s (Retry-After "
                f"{RETRY_AFTER}); wall {b['wall'] / k['wall']:.2f}"
            )
    s.write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
