"""Plumbing shared by the devstack emulators: loopback-only threaded HTTP servers.

Each emulator runs either as its own process (``run_forever``, which announces readiness on one
stdout line so a launcher can wait for it) or inside pytest on an ephemeral port
(``start_in_thread``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"


class DevServer(ThreadingHTTPServer):
    """Threaded server that never outlives its process and can rebind a port at once."""

    daemon_threads = True
    block_on_close = False  # a slow fault still sleeping must not hold up a stop
    allow_reuse_address = True
    app: Any = None  # the emulator's state, shared by every handler thread


class JsonHandler(BaseHTTPRequestHandler):
    """Base handler with JSON helpers; HTTP/1.1 so clients can pool connections as in Azure."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's algorithm holds the body
    # for the client's delayed ACK and every local answer takes about 40 ms longer.
    disable_nagle_algorithm = True
    server_version = "devstack"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("DEVSTACK_VERBOSE") == "1":
            super().log_message(format, *args)

    @property
    def path_only(self) -> str:
        """The request path without its query string, still percent-encoded."""
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters, last value wins."""
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def read_body(self) -> bytes:
        """Read exactly Content-Length bytes, so a kept-alive connection stays in sync."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def read_json(self) -> Any:
        """Parse the body as JSON; raises ValueError when it is not JSON (an empty body is None)."""
        raw = self.read_body()
        return json.loads(raw) if raw.strip() else None

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Answer with a JSON body (or none when payload is None) and the given extra headers."""
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def drop_connection(self) -> None:
        """Close the socket without writing a response, as a failing load balancer would."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # already gone: the client went away first
            self.connection.shutdown(socket.SHUT_RDWR)


def make_server(handler: type[BaseHTTPRequestHandler], port: int = 0, app: Any = None) -> DevServer:
    """Bind ``handler`` to 127.0.0.1 only (port 0 picks a free port), sharing ``app`` state."""
    server = DevServer((HOST, port), handler)
    server.app = app
    return server


def server_url(server: ThreadingHTTPServer) -> str:
    """The base URL a client uses to reach ``server``."""
    return f"http://{HOST}:{server.server_address[1]}"


def start_in_thread(server: ThreadingHTTPServer) -> tuple[str, Callable[[], None]]:
    """Serve in a background thread (for tests); returns the URL and a stop function."""
    # A short poll interval keeps stop() quick, which adds up over a test suite.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="devstack", daemon=True
    )
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return server_url(server), stop


def run_forever(server: ThreadingHTTPServer, name: str, extra: dict[str, Any] | None = None) -> int:
    """Serve in the foreground until SIGTERM or SIGINT, announcing readiness on one stdout line.

    ``extra`` adds what a launcher needs besides the URL (the Logs emulator's rule id, say).
    """

    def on_sigterm(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever to return, so it must not run on the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    print(json.dumps({"ready": name, "url": server_url(server), **(extra or {})}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.stdout.flush()
    return 0
