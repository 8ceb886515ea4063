"""The fleet simulation checked against the real stack: same reports, hosts vs simulated writes.

    python -m bench.fleet_stack [--devices 1200] [--interval 120] [--changes 0.05]
                                [--refresh 150] [--seconds 270] [--hosts 3]

A small fleet starts from empty run-state rows (its first contact: every pair's first report is
a change), its pairs reporting every `--interval` s, a share `--changes` of reports with a new
state; the reports go through `shared.api.ingest` (queue mode, Azurite) on their schedule while
`--hosts` function hosts (`python -m devstack host`) deliver them at the default budget to the
Graph emulator enforcing 200 writes / 20 s. Afterwards `bench.fleet.simulate` runs the very
reports the hosts got (their actual ingest times and states) and the two are compared: Graph
writes (changes and refreshes) and the change-delivery latency, real / simulated, target
within 20%. Bounded: a deadline ends it (and everything it started) after 6 minutes.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import time
from datetime import UTC, datetime, timedelta

from bench import _load
from bench import _stack as s
from bench.client_cost import start_graph
from bench.fleet import DEFAULT_RATE, Fleet, reports, simulate

LIMIT, WINDOW = 200, 20.0
MATCH = 0.20
_STATE = re.compile(r"state-(\d+)")
_DEVICE = re.compile(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})['\")]*$")


def body(device: str, finished: datetime, state: int) -> bytes:
    """An agent report whose script output names the pair's state."""
    return json.dumps(
        {
            "deviceId": device,
            "scriptId": s.SCRIPT,
            "execution": {
                "exitCode": 0,
                "stdout": f'{{"Check":"state-{state}"}}',
                "stderr": "",
                "startedAt": s.utc_text(finished - timedelta(seconds=1)),
                "finishedAt": s.utc_text(finished),
                "timedOut": False,
            },
        }
    ).encode()


def change_latencies(
    sent: list[tuple[float, int, int]], written: list[tuple[float, int, int]]
) -> list[float]:
    """Time from a pair's first report of a state Graph does not have to the write that has it.

    The same rule as the simulation's: (time, pair, state) for reports and for Graph writes.
    """
    events = sorted([(t, 1, p, st) for t, p, st in sent] + [(t, 0, p, st) for t, p, st in written])
    current: dict[int, int] = {}
    delivered: dict[int, int] = {}
    pending: dict[int, float] = {}
    out = []
    for t, is_report, p, st in events:
        if is_report:
            current[p] = st
            if p not in pending and delivered.get(p) != st:
                pending[p] = t
        else:
            delivered[p] = st
            if st == current.get(p) and p in pending:
                out.append(t - pending.pop(p))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_stack", description=__doc__)
    parser.add_argument("--devices", type=int, default=1200)
    parser.add_argument("--interval", type=float, default=120.0)
    parser.add_argument("--changes", type=float, default=0.05)
    parser.add_argument("--refresh", type=float, default=150.0)
    parser.add_argument("--seconds", type=float, default=270.0, help="how long reports arrive")
    parser.add_argument("--drain", type=float, default=30.0, help="delivery after the last one")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    s.deadline(360)
    s.header(
        f"fleet on the real stack: {args.devices} pairs every {args.interval:g} s, "
        f"{args.changes:.0%} changes, refresh {args.refresh:g} s, {args.hosts} hosts, "
        f"budget {args.rate:g}/s, Graph allows {LIMIT}/{WINDOW:g} s"
    )
    fleet = Fleet(
        devices=args.devices,
        scripts=1,
        interval=args.interval,
        changes=args.changes,
        days=args.seconds / 86400,
        rate=args.rate,
        refresh=args.refresh,
        warm=False,
    )
    header = secrets.token_urlsafe(16)
    azurite, storage = s.start_azurite()
    graph = start_graph(f"{LIMIT}/{WINDOW:g}")
    identity = s.start_identity(header)
    settings = {
        "BRIDGE_GRAPH_WRITES_PER_SECOND": f"{args.rate:g}",
        "BRIDGE_REFRESH_INTERVAL": f"{args.refresh:g}s",
        "BRIDGE_DESTINATIONS": "graph",
    }
    env = s.bridge_env(graph, identity, header, storage, **settings)
    bridge = _load.queue_bridge(storage, **settings)
    admin = s.GraphAdmin(graph.url)
    devices = s.device_ids(fleet.pairs, f"fleet-{time.time()}")
    index = {d: i for i, d in enumerate(devices)}
    from shared.api import ingest

    ingest("POST", _load.HEADERS, body(devices[0], datetime.now(UTC), 0), bridge=bridge)
    _load.clear_storage(bridge)
    admin.reset()
    hosts = [s.start_devstack("host", env, f"host-fleet-{i}") for i in range(args.hosts)]
    state = [1] * fleet.pairs
    sent: list[tuple[float, int, int]] = []  # (seconds since start, pair, state) as ingested
    actual: list[tuple[float, int, bool]] = []
    answers: dict[int, int] = {}
    lag = 0.0
    start = time.time()
    try:
        for at, pair, changed in reports(fleet):
            wait = start + at - time.time()
            if wait > 0:
                time.sleep(wait)
            lag = max(lag, -wait)
            if changed:
                state[pair] += 1
            now = datetime.now(UTC)
            answer = ingest(
                "POST", _load.HEADERS, body(devices[pair], now, state[pair]), bridge=bridge
            ).status
            answers[answer] = answers.get(answer, 0) + 1
            if answer == 202:
                moment = now.timestamp() - start
                sent.append((moment, pair, state[pair]))
                actual.append((moment, pair, changed))
        time.sleep(args.drain)
        horizon = time.time() - start
    finally:
        for host in hosts:
            host.stop()
    try:
        patches = [e for e in admin.requests() if e["method"] == "PATCH"]
    finally:
        for proc in (identity, graph, azurite):
            proc.stop()
    written = []
    for e in patches:
        if e["status"] != 200:
            continue
        device = _DEVICE.search(e["path"])
        output = _STATE.search(str((e.get("body") or {}).get("scriptOutput", "")))
        if device and output and device.group(1) in index:
            t = s.parse_time(e["time"]) - start
            written.append((t, index[device.group(1)], int(output.group(1))))
    written.sort()
    throttled = sum(1 for e in patches if e["status"] == 429)
    last: dict[int, int] = {}
    real_changes = 0
    for _, p, st in written:
        real_changes += last.get(p) != st
        last[p] = st
    real_latency = change_latencies(sent, written)
    times = [w[0] for w in written]

    # The same reports, at the times they were accepted, through the simulation.
    simulated = simulate(
        Fleet(**{**fleet.__dict__, "days": horizon / 86400}), schedule=iter(sorted(actual))
    )
    rows = [
        ("Graph writes", len(written), simulated["writes"]),
        ("  of them changes", real_changes, simulated["change_writes"]),
        ("  of them refreshes", len(written) - real_changes, simulated["refresh_writes"]),
        ("change latency p50 s", s.percentile(real_latency, 50), simulated["latency"]["p50"]),
        ("change latency p99 s", s.percentile(real_latency, 99), simulated["latency"]["p99"]),
        ("change latency max s", max(real_latency, default=0.0), simulated["latency"]["max"]),
        ("busiest 20 s", _peak(times), simulated["peak_writes_20s"]),
    ]
    print(
        f"  {len(sent)} reports accepted ({answers}) over {args.seconds:g} s (ingest at most "
        f"{lag:.1f} s behind its schedule), {args.drain:g} s drain; {len(patches)} PATCHes, "
        f"{throttled} answered 429; {len(real_latency)} delivered changes measured"
    )
    print(
        f"\n  {'':24} {'hosts':>10} {'simulated':>10} {'hosts-sim':>10} {'hosts/sim':>10}"
        f"  within {MATCH:.0%}"
    )
    verdicts = {}
    for name, real, sim in rows:
        ratio = real / sim if sim else (1.0 if real == 0 else float("inf"))
        ok = abs(ratio - 1) <= MATCH
        verdicts[name] = ok
        print(
            f"  {name:24} {real:10.1f} {sim:10.1f} {real - sim:10.1f} {ratio:10.3f}  "
            f"{s.verdict(ok)}"
        )
    s.write_json(
        args.json,
        {
            "args": vars(args),
            "rows": rows,
            "verdicts": verdicts,
            "throttled": throttled,
            "simulated": simulated,
            "ingest_lag": lag,
        },
    )
    return 0


def _peak(times: list[float]) -> int:
    from bench.pacing import peak_window

    return peak_window(times) if times else 0


if __name__ == "__main__":
    raise SystemExit(main())
