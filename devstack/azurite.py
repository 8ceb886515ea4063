"""Azurite (npm, pure JavaScript) for queues, tables and blobs on 127.0.0.1.

`python -m devstack azurite [--port N]` runs it in the foreground; `start()` runs it for the stack
or a test on free ports and returns the connection string the function host needs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Azurite's fixed development account: public, documented, and accepted only by Azurite.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def binary() -> str:
    local = ROOT / "node_modules" / ".bin" / "azurite"
    found = str(local) if local.exists() else shutil.which("azurite")
    if not found:
        raise RuntimeError("Azurite is not installed: run `make install` (npm ci) first")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connection_string(blob: int, queue: int, table: int) -> str:
    base = "http://127.0.0.1"
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint={base}:{blob}/{ACCOUNT};QueueEndpoint={base}:{queue}/{ACCOUNT};"
        f"TableEndpoint={base}:{table}/{ACCOUNT};"
    )


@dataclass
class Azurite:
    process: subprocess.Popen[bytes]
    ports: tuple[int, int, int]

    @property
    def connection_string(self) -> str:
        return connection_string(*self.ports)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start(blob_port: int = 0, timeout: float = 30) -> Azurite:
    """Start Azurite in memory; blob, queue and table take three consecutive-or-free ports."""
    ports = (
        blob_port or free_port(),
        blob_port + 1 if blob_port else free_port(),
        blob_port + 2 if blob_port else free_port(),
    )
    process = subprocess.Popen(
        [
            binary(),
            "--silent",
            "--inMemoryPersistence",
            # The current storage SDKs send a newer API version than Azurite knows.
            "--skipApiVersionCheck",
            "--loose",
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(ports[0]),
            "--queueHost",
            "127.0.0.1",
            "--queuePort",
            str(ports[1]),
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            str(ports[2]),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"Azurite did not start on ports {ports}")
        try:
            socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5).close()
            pending.pop(0)
        except OSError:
            time.sleep(0.1)
    return Azurite(process, ports)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack azurite", description=__doc__)
    parser.add_argument("--port", type=int, default=10000, help="blob port; queue +1, table +2")
    args = parser.parse_args(argv)
    azurite = start(args.port)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    print(
        json.dumps(
            {
                "ready": "azurite",
                "url": f"http://127.0.0.1:{azurite.ports[1]}",
                "connectionString": azurite.connection_string,
            }
        ),
        flush=True,
    )
    while not stopping and azurite.process.poll() is None:
        time.sleep(0.3)
    azurite.stop()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
