"""A local stand-in for the Functions host: serves the HTTP triggers of `function_app.app`.

Core Tools cannot be installed on our machines, so this indexes the app the way the Python worker
does (`get_functions()`), routes `/{routePrefix}/{route}` by method, and builds real
`azure.functions.HttpRequest` objects. Like Core Tools it does not check function keys.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from devstack.serving import JsonHandler, make_server, run_forever

ROOT = Path(__file__).resolve().parent.parent
# The Functions host refuses bodies above 100 MB before a function sees them.
HOST_MAX_BODY = 100 * 1024 * 1024
log = logging.getLogger("devstack.host")


def load_local_settings(path: Path, environ: dict[str, str] | Any = os.environ) -> list[str]:
    """Fill unset variables from local.settings.json's `Values`; the environment always wins."""
    if not path.is_file():
        return []
    values = json.loads(path.read_text()).get("Values", {})
    filled = [k for k, v in values.items() if k not in environ and isinstance(v, str)]
    for key in filled:
        environ[key] = values[key]
    return filled


@dataclass(frozen=True)
class HttpRoute:
    path: str
    methods: frozenset[str]
    handler: Any


def index_http_routes(app: func.FunctionApp, prefix: str) -> list[HttpRoute]:
    routes = []
    for function in app.get_functions():
        trigger = function.get_trigger().get_dict_repr()
        if trigger.get("type") != "httpTrigger":
            continue
        route = (trigger.get("route") or function.get_function_name()).strip("/")
        methods = frozenset(
            str(getattr(m, "value", m)).upper() for m in trigger.get("methods") or []
        )
        full = "/" + "/".join(part for part in (prefix.strip("/"), route) if part)
        routes.append(HttpRoute(full.lower(), methods, function.get_user_function()))
    return routes


def route_prefix(root: Path) -> str:
    host = json.loads((root / "host.json").read_text())
    return host.get("extensions", {}).get("http", {}).get("routePrefix", "api")


class HostHandler(JsonHandler):
    server_version = "devstack-functions-host"

    def _dispatch(self) -> None:
        started = time.monotonic()
        routes: list[HttpRoute] = self.server.app  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        match = next((r for r in routes if r.path == parts.path.rstrip("/").lower()), None)
        if match is None or (match.methods and self.command not in match.methods):
            self.close_connection = True
            self.send_json(404, None)
            return self._log(404, started)
        body = self._read_body()
        if body is None:
            return self._log(413, started)
        request = func.HttpRequest(
            method=self.command,
            url=f"http://{self.headers.get('Host', '127.0.0.1')}{self.path}",
            headers=dict(self.headers.items()),
            params=dict(parse_qsl(parts.query)),
            route_params={},
            body=body,
        )
        try:
            response: func.HttpResponse = match.handler(request)
        except Exception:
            log.exception("function raised for %s %s", self.command, parts.path)
            self.send_json(500, None)
            return self._log(500, started)
        payload = response.get_body() or b""
        self.send_response(response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in ("content-length", "content-type"):
                self.send_header(name, value)
        if response.mimetype:
            charset = f"; charset={response.charset}" if response.charset else ""
            self.send_header("Content-Type", f"{response.mimetype}{charset}")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self._log(response.status_code, started)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_text = self.headers.get("Content-Length") or "0"
        length = int(length_text) if length_text.isdigit() else -1
        if length < 0 or length > HOST_MAX_BODY:
            self.close_connection = True
            self.send_json(413 if length > 0 else 400, None)
            return None
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes | None:
        chunks, total = [], 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > HOST_MAX_BODY:
                self.close_connection = True
                self.send_json(413, None)
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _log(self, status: int, started: float) -> None:
        elapsed = (time.monotonic() - started) * 1000
        log.info("%s %s -> %d (%.1f ms)", self.command, urlsplit(self.path).path, status, elapsed)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


def build_server(port: int = 0, root: Path = ROOT, module: str = "function_app") -> Any:
    load_local_settings(root / "local.settings.json")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    app = importlib.import_module(module).app
    return make_server(HostHandler, port, index_http_routes(app, route_prefix(root)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack host", description=__doc__)
    parser.add_argument("--port", type=int, default=7071)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_forever(build_server(args.port), "host")


if __name__ == "__main__":
    raise SystemExit(main())
