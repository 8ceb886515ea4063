"""The local function host (devstack.host) serving the HTTP triggers only, no queue trigger.

    python -m bench._ingest_host --port 0 [--nagle]

Same app indexing, request handling and logging as `python -m devstack host`; only the queue
listeners are not started, so an ingest benchmark measures ingest alone (no delivery sharing the
process) and a backlog can build up before delivery starts. `--nagle` turns Nagle's algorithm
back on, to show what it cost the devstack host's two-write responses (bench/README.md).
"""

from __future__ import annotations

import argparse
import logging

from devstack.host import HostHandler, build_host
from devstack.serving import run_forever


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._ingest_host", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--nagle", action="store_true")
    args = parser.parse_args(argv)
    HostHandler.disable_nagle_algorithm = not args.nagle
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("azure.core.pipeline.policies.http_logging_policy", "azure.identity"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server, _listeners = build_host(args.port)
    return run_forever(server, "host")


if __name__ == "__main__":
    raise SystemExit(main())
