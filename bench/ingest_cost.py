"""Ingest cost: reports per second per core, in process and through the local host over HTTP.

    python -m bench.ingest_cost [--inprocess 2000] [--http 10000] [--concurrency 16]

1. In process: shared.api.ingest(...) (envelope, validate, map, stale check, enqueue to Azurite,
   record) with a queue-mode Bridge, one thread; wall and CPU (time.process_time) per report.
2. HTTP: the local function host (bench/_ingest_host.py: devstack.host without the queue
   trigger) on 127.0.0.1, `--http` reports from `--concurrency` client threads, twice: the same
   devices report again with a newer version in run 2. Latency p50/p99 at the client, host CPU
   from /proc, peak RSS (VmHWM) after each run; target: run 2's peak within 10% of run 1's.

"Per core" = reports per CPU-second of the bridge's process. Azurite's CPU (Node.js) is shown
apart: in Azure, storage is a service and does not run on the function's cores.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import _load
from bench import _stack as s

RSS_GROWTH_TARGET = 0.10


def in_process(storage: str, azurite: s.Proc, n: int, warmup: int) -> dict[str, Any]:
    bridge = _load.queue_bridge(storage)
    finished = datetime.now(UTC) - timedelta(minutes=3)
    devices = s.device_ids(n + warmup, f"inproc-{time.time()}")
    reports = [s.report(d, finished) for d in devices]
    _load.ingest_in_process(bridge, reports[:warmup])
    azurite_cpu = s.cpu_seconds(azurite.pid)
    with s.timed() as t:
        statuses = _load.ingest_in_process(bridge, reports[warmup:])
    azurite_cpu = s.cpu_seconds(azurite.pid) - azurite_cpu
    return {
        "n": n,
        "statuses": dict(statuses),
        "wall_ms": t["wall"] / n * 1000,
        "cpu_ms": t["cpu"] / n * 1000,
        "reports_per_s": n / t["wall"],
        "reports_per_cpu_s": n / t["cpu"],
        "azurite_cpu_ms": azurite_cpu / n * 1000,
    }


def probe(host: s.Proc, n: int, base: datetime, label: str) -> dict[str, Any]:
    """Service time without queueing: one request at a time."""
    devices = s.device_ids(n, f"probe-{time.time()}")
    load = _load.post_http(host.url, [s.report(d, base) for d in devices], 1)
    ms = [x * 1000 for x in load.latencies]
    result = {
        "n": n,
        "statuses": dict(load.statuses),
        "p50_ms": s.percentile(ms, 50),
        "p99_ms": s.percentile(ms, 99),
    }
    print(
        f"  HTTP one request at a time, {label}, {n} reports {result['statuses']}: "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms",
        flush=True,
    )
    return result


def http_run(host: s.Proc, azurite: s.Proc, reports: list[dict[str, Any]], concurrency: int) -> Any:
    host_cpu, azurite_cpu = s.cpu_seconds(host.pid), s.cpu_seconds(azurite.pid)
    client_cpu = time.process_time()
    with s.RssSampler(host.pid) as sampler:
        load = _load.post_http(host.url, reports, concurrency)
    n = len(reports)
    host_cpu = s.cpu_seconds(host.pid) - host_cpu
    memory = s.memory_kib(host.pid)
    ms = [x * 1000 for x in load.latencies]
    return {
        "n": n,
        "statuses": dict(load.statuses),
        "wall_s": load.wall,
        "reports_per_s": n / load.wall,
        "p50_ms": s.percentile(ms, 50),
        "p99_ms": s.percentile(ms, 99),
        "host_cpu_ms": host_cpu / n * 1000,
        "reports_per_host_cpu_s": n / host_cpu,
        "azurite_cpu_ms": (s.cpu_seconds(azurite.pid) - azurite_cpu) / n * 1000,
        "client_cpu_ms": (time.process_time() - client_cpu) / n * 1000,
        "rss_peak_sampled_kib": max(sampler.samples, default=0),
        "vm_hwm_kib": memory["VmHWM"],
        "vm_rss_kib": memory["VmRSS"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_cost", description=__doc__)
    parser.add_argument("--inprocess", type=int, default=2000)
    parser.add_argument("--http", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--probe", type=int, default=200, help="reports sent one at a time")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    s.deadline(120 + args.inprocess * 0.2 + args.http * 2 * 0.15)
    s.header("ingest cost: validate, map, enqueue (queue mode, Azurite)")
    azurite, storage = s.start_azurite()
    figures: dict[str, Any] = {}
    try:
        figures["inprocess"] = r = in_process(storage, azurite, args.inprocess, args.warmup)
        print(
            f"  in process, 1 thread, {r['n']} reports {r['statuses']}: "
            f"{r['wall_ms']:.2f} ms wall, {r['cpu_ms']:.2f} ms CPU per report = "
            f"{r['reports_per_s']:.0f} reports/s, {r['reports_per_cpu_s']:.0f} reports per "
            f"CPU-second; Azurite {r['azurite_cpu_ms']:.2f} ms CPU per report",
            flush=True,
        )
        env = {
            "BRIDGE_DELIVERY_MODE": "queue",
            "AzureWebJobsStorage": storage,
            "AZURE_CLIENT_ID": s.CLIENT_ID,
        }
        host = s.start_module("bench._ingest_host", ["--port", "0"], env, "ingest-host")
        try:
            base = datetime.now(UTC) - timedelta(minutes=30)
            warm = [s.report(d, base) for d in s.device_ids(args.warmup, f"warm-{time.time()}")]
            _load.post_http(host.url, warm, args.concurrency)
            after_warmup = s.memory_kib(host.pid)
            figures["latency_concurrency_1"] = probe(host, args.probe, base, "stock host")
            devices = s.device_ids(args.http, f"http-{time.time()}")
            runs = []
            for run in (1, 2):
                finished = base + timedelta(minutes=run)
                reports = [s.report(d, finished) for d in devices]
                result = http_run(host, azurite, reports, args.concurrency)
                runs.append(result)
                print(
                    f"  HTTP run {run}, {result['n']} reports at concurrency {args.concurrency} "
                    f"{result['statuses']}: {result['reports_per_s']:.0f} reports/s, p50 "
                    f"{result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms; host "
                    f"{result['host_cpu_ms']:.2f} ms CPU per report = "
                    f"{result['reports_per_host_cpu_s']:.0f} reports per CPU-second; "
                    f"peak RSS {result['vm_hwm_kib'] / 1024:.1f} MiB, RSS after "
                    f"{result['vm_rss_kib'] / 1024:.1f} MiB",
                    flush=True,
                )
        finally:
            host.stop()
        nagle = s.start_module(
            "bench._ingest_host", ["--port", "0", "--nagle"], env, "ingest-host-nagle"
        )
        try:
            warm = [s.report(d, base) for d in s.device_ids(20, f"warm-nd-{time.time()}")]
            _load.post_http(nagle.url, warm, 1)
            figures["latency_concurrency_1_nagle"] = probe(
                nagle, args.probe, base, "host with Nagle's algorithm on"
            )
        finally:
            nagle.stop()
    finally:
        azurite.stop()
    figures["http"] = runs
    growth = runs[1]["vm_hwm_kib"] / runs[0]["vm_hwm_kib"] - 1
    growth_rss = runs[1]["vm_rss_kib"] / runs[0]["vm_rss_kib"] - 1
    figures |= {"rss_after_warmup_kib": after_warmup, "peak_growth": growth}
    print(
        f"\n  host RSS after warm-up {after_warmup['VmRSS'] / 1024:.1f} MiB; peak RSS run 1 "
        f"{runs[0]['vm_hwm_kib'] / 1024:.1f} MiB, after run 2 {runs[1]['vm_hwm_kib'] / 1024:.1f}"
        f" MiB: growth {growth:+.1%} (RSS after each run {growth_rss:+.1%}); target <= "
        f"{RSS_GROWTH_TARGET:.0%}: {s.verdict(growth <= RSS_GROWTH_TARGET)}"
    )
    inproc, http = figures["inprocess"], runs[1]
    print(
        f"  per core: in process {inproc['reports_per_cpu_s']:.0f} reports/CPU-s; through the "
        f"host {http['reports_per_host_cpu_s']:.0f} reports/CPU-s (HTTP / in-process CPU per "
        f"report {http['host_cpu_ms'] / inproc['cpu_ms']:.2f}); client threads used "
        f"{http['client_cpu_ms']:.2f} ms CPU per report on the same 2 cores"
    )
    s.write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
