"""Storage calls per accepted report and per delivered write, counted, now and before.

    python -m bench.storage_calls [--n 100] [--before 2342c3f | --before '']

One Azurite, one Graph emulator (no limit) and one identity emulator; then, for the tree in this
checkout and for an older revision (`git archive` of it into a temporary directory, nothing in
git changes), a fresh process (bench/_storage_worker.py) runs queue mode with the `graph`
destination only: N reports for new pairs through `shared.api.ingest`, their delivery through
`shared.delivery.on_queue_message` (a receive of up to 16 and a delete per message, as the
Functions host's trigger does), the same N pairs again with the same state (unchanged within
the refresh interval), then with a changed state. Every HTTP request the storage SDKs send to
Azurite is counted at azure-core's transport. Targets: ingest <= 2 table calls per accepted
report, delivery <= 6 storage calls per delivered write.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from bench import _stack as s
from bench.client_cost import start_graph

INGEST_TABLE_TARGET = 2
DELIVERY_TARGET = 6
WORKER = s.BENCH / "_storage_worker.py"


def checkout(revision: str, into: Path) -> Path:
    """The product files of `revision`, extracted (no worktree, no change to git)."""
    archive = into / "tree.tar"
    with archive.open("wb") as out:
        subprocess.run(
            [
                shutil.which("git") or "git",
                "archive",
                revision,
                "shared",
                "function_app.py",
                "host.json",
            ],
            cwd=s.ROOT,
            stdout=out,
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def measure(tree: Path, env: dict[str, str], n: int) -> dict[str, Any]:
    popen = subprocess.run(
        [sys.executable, str(WORKER)],
        cwd=tree,
        input=json.dumps({"env": env, "n": n}),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [line for line in popen.stdout.splitlines() if line.startswith("{")]
    if popen.returncode != 0 or not lines:
        raise RuntimeError(f"storage worker in {tree} failed:\n{popen.stderr[-3000:]}")
    return json.loads(lines[-1])


def per_item(phase: dict[str, Any], n: int) -> dict[str, float]:
    return {kind: count / n for kind, count in sorted(phase["counts"].items())}


def show(label: str, result: dict[str, Any]) -> dict[str, dict[str, float]]:
    n = result["n"]
    print(f"\n  {label}: calls per report ({n} reports per phase)")
    table: dict[str, dict[str, float]] = {}
    for name, phase in result["phases"].items():
        calls = per_item(phase, n)
        table[name] = calls
        total = sum(calls.values())
        bridge = sum(v for k, v in calls.items() if k.startswith("bridge"))
        tables = sum(v for k, v in calls.items() if k.startswith("bridge: table"))
        detail = ", ".join(
            f"{k.split(': ')[1]} {v:g}" + (" (trigger)" if k.startswith("trigger") else "")
            for k, v in calls.items()
        )
        print(
            f"    {name:<24} total {total:5.2f}  bridge {bridge:5.2f}  table {tables:5.2f}"
            f"   [{detail}]  answers {phase['answer']}"
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage_calls", description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--before", default="2342c3f", help="a git revision; '' for none")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    s.deadline(900)
    s.header(f"storage calls: {args.n} reports per phase, queue mode, graph only")
    header = secrets.token_urlsafe(16)
    azurite, storage = s.start_azurite()
    graph = start_graph("0")
    identity = s.start_identity(header)
    env = s.bridge_env(
        graph,
        identity,
        header,
        storage,
        BRIDGE_GRAPH_WRITES_PER_SECOND="10",
        BRIDGE_DESTINATIONS="graph",
    )
    out: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bridge-before-") as tmp:
            trees = {"now": s.ROOT}
            if args.before:
                trees[f"before ({args.before})"] = checkout(args.before, Path(tmp))
            for label, tree in trees.items():
                # Each tree starts from empty storage, so both see new pairs first.
                for queue in ("compliance-results", "compliance-results-poison"):
                    subprocess.run([sys.executable, "-c", _CLEAR, storage, queue], check=True)
                out[label] = show(label, measure(tree, env, args.n))
    finally:
        for proc in (identity, graph, azurite):
            proc.stop()
    now = out["now"]
    ingest = max(
        sum(v for k, v in now[p].items() if k.startswith("bridge: table"))
        for p in ("ingest, new pair", "ingest, existing pair", "ingest, changed state")
    )
    delivery = max(
        sum(now[p].values()) for p in ("delivery, first write", "delivery, changed state")
    )
    print(
        f"\n  ingest, table calls per accepted report (worst phase): {ingest:.2f}; "
        f"target <= {INGEST_TABLE_TARGET}: {s.verdict(ingest <= INGEST_TABLE_TARGET)}"
    )
    print(
        f"  delivery, storage calls per delivered write, trigger's receive and delete included "
        f"(worst phase): {delivery:.2f}; target <= {DELIVERY_TARGET}: "
        f"{s.verdict(delivery <= DELIVERY_TARGET)}"
    )
    s.write_json(args.json, {"n": args.n, "per_report": out})
    return 0


# Empty the table and a queue so that each tree starts alike (a child: nothing stays imported).
_CLEAR = """
import sys
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient
from azure.core.exceptions import ResourceNotFoundError
conn, name = sys.argv[1], sys.argv[2]
try:
    QueueClient.from_connection_string(conn, name).clear_messages()
except ResourceNotFoundError:
    pass
table = TableClient.from_connection_string(conn, "runstates")
try:
    for e in list(table.list_entities()):
        table.delete_entity(e["PartitionKey"], e["RowKey"])
except ResourceNotFoundError:
    pass
"""


if __name__ == "__main__":
    raise SystemExit(main())
