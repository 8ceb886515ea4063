"""Cold start: import function_app and serve the first request, against azure.functions alone.

    python -m bench.cold_start [--reps 7]

Each repetition starts fresh interpreters (project venv), alternating the two kinds: one only
imports azure.functions (the floor every Python function app pays); the other imports
function_app, indexes it (app.get_functions(), as the worker does), then serves a first and a
second ingest request in queue mode against Azurite. Medians. Also checked, after the import and
before any request: shared.runtime._bridge is None and no requests.Session, credential or storage
client object exists (gc scan), and which heavy modules were imported.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import _stack as s

# Where function_app's import time goes (python -X importtime, cumulative, where first imported).
ATTRIBUTED = (
    "azure.functions",
    "pydantic",
    "shared.models",
    "shared.settings",
    "azure.core",
    "requests",
    "cryptography.x509",
    "standardwebhooks",
)


def import_breakdown() -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import function_app"],
        cwd=s.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seconds: dict[str, float] = {}
    for line in done.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2] in (*ATTRIBUTED, "function_app"):
            seconds.setdefault(parts[2], int(parts[1]) / 1e6)
    return seconds


def run(mode: str, report: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    result = s.run_worker(sys.executable, ["-m", "bench._cold_start_worker", mode], report)
    result["process_s"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    s.deadline(120 + args.reps * 30)
    s.header(f"cold start: {args.reps} fresh processes each, medians")
    azurite, storage = s.start_azurite()
    env = {
        "BRIDGE_DELIVERY_MODE": "queue",
        "AzureWebJobsStorage": storage,
        "AZURE_CLIENT_ID": s.CLIENT_ID,
    }
    os.environ.update(env)  # the workers inherit it, as the Functions host passes app settings
    runs: dict[str, list[dict[str, Any]]] = {"functions": [], "app": []}
    breakdowns = []
    try:
        finished = datetime.now(UTC) - timedelta(minutes=1)
        for rep in range(args.reps):
            order = ["functions", "app"] if rep % 2 == 0 else ["app", "functions"]
            for mode in order:
                device = s.device_ids(1, f"cold-{rep}-{time.time()}")[0]
                runs[mode].append(run(mode, s.report(device, finished)))
            breakdowns.append(import_breakdown())
    finally:
        azurite.stop()
    f, a = runs["functions"], runs["app"]
    med = {
        "functions_import": s.median([r["import_s"] for r in f]),
        "functions_process": s.median([r["process_s"] for r in f]),
        "app_import": s.median([r["import_s"] for r in a]),
        "app_index": s.median([r["index_s"] for r in a]),
        "app_first_request": s.median([r["first_request_s"] for r in a]),
        "app_second_request": s.median([r["second_request_s"] for r in a]),
        "app_cold_total": s.median([r["cold_total_s"] for r in a]),
        "app_process": s.median([r["process_s"] for r in a]),
    }
    clean = all(r["bridge_is_none_after_import"] and not r["created_at_import"] for r in a)
    statuses = sorted({(r["first_status"], r["second_status"]) for r in a})
    print(f"  import azure.functions alone:            {med['functions_import'] * 1000:7.0f} ms")
    print(f"  import function_app:                     {med['app_import'] * 1000:7.0f} ms")
    print(f"  index (app.get_functions()):             {med['app_index'] * 1000:7.0f} ms")
    print(f"  first ingest request (builds the Bridge): {med['app_first_request'] * 1000:6.0f} ms")
    print(f"  second ingest request (warm):            {med['app_second_request'] * 1000:7.1f} ms")
    print(f"  import + index + first request:          {med['app_cold_total'] * 1000:7.0f} ms")
    print(
        f"  whole process (interpreter start to exit): azure.functions "
        f"{med['functions_process'] * 1000:.0f} ms, app {med['app_process'] * 1000:.0f} ms"
    )
    print(f"  request statuses (first, second): {statuses}")
    print(
        f"\n  import function_app / import azure.functions: "
        f"{med['app_import'] / med['functions_import']:.2f}"
    )
    print(
        f"  (import + index + first request) / import azure.functions: "
        f"{med['app_cold_total'] / med['functions_import']:.2f}"
    )
    print(f"  heavy modules imported by function_app: {a[0]['heavy_modules_at_import'] or 'none'}")
    print(f"  ... and after the first request: {a[0]['heavy_modules_after_request']}")
    created = sorted({c for r in a for c in r["created_at_import"]})
    print(
        f"  nothing created at import (shared.runtime._bridge is None, no session, credential "
        f"or storage client): {s.verdict(clean)}{'' if clean else f' {created}'}"
    )
    print("\n  -X importtime of function_app (cumulative ms where first imported, median):")
    for name in ("function_app", *ATTRIBUTED):
        values = [b[name] for b in breakdowns if name in b]
        if values:
            print(f"    {name:22} {s.median(values) * 1000:7.0f}")
    s.write_json(
        args.json,
        {"medians": med, "runs": runs, "clean_import": clean, "importtime": breakdowns},
    )
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
