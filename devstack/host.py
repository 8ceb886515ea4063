"""A local stand-in for the Functions host: serves the HTTP triggers of `function_app.app`.

Core Tools cannot be installed on our machines, so this indexes the app the way the Python worker
does (`get_functions()`), routes `/{routePrefix}/{route}` by method, and builds real
`azure.functions.HttpRequest` objects. Like Core Tools it does not check function keys.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
import threading
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


def index_http_routes(functions: list[Any], prefix: str) -> list[HttpRoute]:
    routes = []
    for function in functions:
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


@dataclass(frozen=True)
class QueueOptions:
    """host.json `extensions.queues`, with the Functions host's defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    base64: bool = True

    @classmethod
    def from_host_json(cls, root: Path) -> QueueOptions:
        queues = (
            json.loads((root / "host.json").read_text()).get("extensions", {}).get("queues", {})
        )
        batch = int(queues.get("batchSize", 16))
        return cls(
            batch_size=batch,
            new_batch_threshold=int(queues.get("newBatchThreshold", batch // 2)),
            max_polling_interval=_timespan(queues.get("maxPollingInterval", "00:01:00")),
            visibility_timeout=_timespan(queues.get("visibilityTimeout", "00:00:00")),
            max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            base64=str(queues.get("messageEncoding", "base64")).lower() == "base64",
        )


def _timespan(value: str | float) -> float:
    """host.json writes durations as .NET TimeSpans (`00:00:02`) or milliseconds."""
    if isinstance(value, int | float):
        return value / 1000
    hours, minutes, seconds = value.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


class QueueListener:
    """Polls one queue like the Functions host: batches, dequeue count, visibility, poison."""

    def __init__(self, name: str, queue: str, handler: Any, options: QueueOptions) -> None:
        from azure.storage.queue import QueueClient

        # The trigger's `connection` names an app setting; locally it is a connection string.
        connection = os.environ["AzureWebJobsStorage"]
        self.name, self.handler, self.options = name, handler, options
        self.queue = QueueClient.from_connection_string(connection, queue)
        self.poison = QueueClient.from_connection_string(connection, f"{queue}-poison")
        # The real host holds a message for 10 minutes while a function runs; a crashed host's
        # messages come back after that. Tests that kill a host shorten it.
        self.lease = int(os.environ.get("DEVSTACK_QUEUE_LEASE", "600"))
        self.stopping = threading.Event()
        self._inflight = 0
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._poll, name=f"queue-{queue}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _ensure_queues(self) -> bool:
        from azure.core.exceptions import ResourceExistsError

        try:
            for client in (self.queue, self.poison):
                with contextlib.suppress(ResourceExistsError):
                    client.create_queue()
        except Exception:
            log.warning("storage unreachable for %s; retrying", self.queue.queue_name)
            return False
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    def _poll(self) -> None:
        while not self._ensure_queues():
            if self.stopping.wait(self.options.max_polling_interval):
                return
        delay = 0.05
        while not self.stopping.is_set():
            # Like the host: fetch the next batch once in-flight work drops to newBatchThreshold.
            with self._lock:
                busy = self._inflight > self.options.new_batch_threshold
            if busy:
                time.sleep(0.02)
                continue
            try:
                batch = list(
                    self.queue.receive_messages(
                        max_messages=min(self.options.batch_size, 32),
                        visibility_timeout=self.lease,
                    )
                )
            except Exception:
                log.exception("polling %s failed", self.queue.queue_name)
                batch = []
            with self._lock:
                self._inflight += len(batch)
            for message in batch:
                threading.Thread(target=self._run, args=(message,), daemon=True).start()
            if batch:
                delay = 0.05
            else:
                self.stopping.wait(delay)
                delay = min(delay * 2, self.options.max_polling_interval)

    def _run(self, message: Any) -> None:
        import base64

        from azure.functions.queue import QueueMessage

        try:
            content = message.content
            body = base64.b64decode(content) if self.options.base64 else content.encode()
            self.handler(
                QueueMessage(
                    id=message.id,
                    body=body,
                    dequeue_count=message.dequeue_count,
                    pop_receipt=message.pop_receipt,
                )
            )
            self.queue.delete_message(message)
        except Exception:
            log.exception("%s failed (dequeue count %d)", self.name, message.dequeue_count)
            self._failed(message)
        finally:
            with self._lock:
                self._inflight -= 1

    def _failed(self, message: Any) -> None:
        try:
            if message.dequeue_count >= self.options.max_dequeue_count:
                log.warning(
                    "message %s reached MaxDequeueCount %d; moving it to %s",
                    message.id,
                    self.options.max_dequeue_count,
                    self.poison.queue_name,
                )
                self.poison.send_message(message.content, time_to_live=-1)
                self.queue.delete_message(message)
            else:
                self.queue.update_message(
                    message, visibility_timeout=int(self.options.visibility_timeout)
                )
        except Exception:
            log.exception("could not release message %s; it returns after its lease", message.id)


def index_queue_listeners(functions: list[Any], root: Path) -> list[QueueListener]:
    options = QueueOptions.from_host_json(root)
    listeners = []
    for function in functions:
        trigger = function.get_trigger().get_dict_repr()
        if trigger.get("type") == "queueTrigger" and not disabled(function.get_function_name()):
            listeners.append(
                QueueListener(
                    function.get_function_name(),
                    trigger["queueName"],
                    function.get_user_function(),
                    options,
                )
            )
    return listeners


def disabled(name: str) -> bool:
    """The Functions host's own switch, `AzureWebJobs.<name>.Disabled` (`__` for the dots where
    a platform's setting names cannot hold them): that function does not run."""
    for key in (f"AzureWebJobs.{name}.Disabled", f"AzureWebJobs__{name}__Disabled"):
        if os.environ.get(key, "").strip().lower() in ("true", "1"):
            return True
    return False


def build_host(
    port: int = 0, root: Path = ROOT, module: str = "function_app"
) -> tuple[Any, list[QueueListener]]:
    """The HTTP server and, when storage is configured, the queue listeners of the app."""
    load_local_settings(root / "local.settings.json")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    # get_functions() indexes (and validates) once, as the worker does at start-up.
    functions = importlib.import_module(module).app.get_functions()
    server = make_server(HostHandler, port, index_http_routes(functions, route_prefix(root)))
    listeners = (
        index_queue_listeners(functions, root) if os.environ.get("AzureWebJobsStorage") else []
    )
    return server, listeners


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack host", description=__doc__)
    parser.add_argument("--port", type=int, default=7071)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("azure.core.pipeline.policies.http_logging_policy", "azure.identity"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server, listeners = build_host(args.port)
    for listener in listeners:
        listener.start()
    try:
        return run_forever(server, "host")
    finally:
        for listener in listeners:
            listener.stop()


if __name__ == "__main__":
    raise SystemExit(main())
