"""Run every benchmark, one after the other, keeping each one's output.

    python -m bench [--out bench/results] [--only client_cost,throttle,...]

Each benchmark runs as its own process (`python -m bench.<name>`), prints as it goes, and its
output and figures land in `<out>/<name>.txt` and `<out>/<name>.json`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench._stack import ROOT, SDK_PYTHON

BENCHMARKS = [
    "client_cost",
    "throttle",
    "pacing",
    "coalescing",
    "ingest_cost",
    "cold_start",
    "fleet",
    "fleet_stack",
    "storage_calls",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not SDK_PYTHON.exists():
        print("note: no bench/.venv-sdk, so no SDK side (create it: python -m bench.sdk_venv)")
    failed = []
    for name in args.only.split(","):
        command = [sys.executable, "-m", f"bench.{name}", "--json", str(out / f"{name}.json")]
        if name == "client_cost" and not SDK_PYTHON.exists():
            command.append("--no-sdk")
        print(f"\n$ python -m bench.{name}", flush=True)
        with (out / f"{name}.txt").open("w") as log:
            child = subprocess.Popen(
                command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for line in child.stdout:  # type: ignore[union-attr]
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
            if child.wait() != 0:
                failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
