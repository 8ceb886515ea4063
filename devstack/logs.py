"""Azure Monitor Logs Ingestion API emulator, faithful to what the bridge's `logs` destination uses.

``POST /dataCollectionRules/{ruleId}/streams/{stream}?api-version=2023-01-01`` with a bearer token
for the monitor audience (devstack.tokens, issued by the identity emulator), a JSON array body,
gzip-encoded or not, of at most 1 MiB on the wire, each row checked against the stream's declared
columns; ``204`` on success. Faults (413, 429 with Retry-After, 503, latency, dropped connections)
come from settings or ``/_emulator/faults``, as in the Graph emulator; ``/_emulator/rows`` reads
the stored rows back and ``/_emulator/requests`` counts the calls.

What the service is known to answer (public SDK tests and issue threads): 204 with no body;
413 ``ContentLengthLimitExceeded`` "Maximum allowed content length: 1048576 bytes (1 MB).
Provided content length: N bytes." on the wire size, with about 50 MiB allowed decompressed;
401 ``InvalidAudience`` for a token meant for another resource; 403 ``OperationFailed`` without
the Monitoring Metrics Publisher role on the DCR; 500 with no error code for an empty body; field
values over 64 KB truncated. Errors are ``{"error": {"code", "message"}}`` with
``x-ms-error-code``. The other codes (InvalidApiVersion, InvalidStream, NotFound, InvalidPayload,
InvalidContentEncoding) follow that shape; their exact wording is not published. Refusing unknown
columns and mistyped values with 400 is stricter than the live service, which is known to accept
some such rows and drop them later: here a mapping mistake fails the test that makes it.

Run alone: ``python -m devstack logs --port 7074``; BRIDGE_LOGS_ENDPOINT is the printed url.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import threading
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from devstack import tokens
from devstack.faults import admit, format_retry_after, parse_limit, take_fault, validate_faults
from devstack.serving import DevServer, JsonHandler, make_server, run_forever

API_VERSION = "2023-01-01"
# Global cloud; Azure China uses https://monitor.azure.cn and US Government https://monitor.azure.us.
DEFAULT_AUDIENCE = "https://monitor.azure.com"
DEFAULT_RULE_ID = "dcr-de75000000000000000000000000b71d"
DEFAULT_STREAM = "Custom-IntuneComplianceScriptState_CL"
DEFAULT_COLUMNS: dict[str, str] = {
    "TimeGenerated": "datetime",
    "ReportId": "string",
    "ScriptId": "string",
    "DeviceId": "string",
    "DetectionState": "string",
    "LastStateUpdateDateTime": "datetime",
    "ExpectedStateUpdateDateTime": "datetime",
    "LastSyncDateTime": "datetime",
    "ScriptOutput": "string",
    "ScriptError": "string",
    "AgentVersion": "string",
}
COLUMN_TYPES = ("string", "datetime", "int", "long", "real", "boolean", "dynamic")
MAX_CONTENT_LENGTH = 1024 * 1024  # on the wire, compressed or not
MAX_DECODED_LENGTH = 50 * 1024 * 1024  # checked after decompression
MAX_READ = 16 * 1024 * 1024  # a body larger than this is refused unread
MAX_FIELD_BYTES = 64 * 1024  # longer string values are truncated, not refused
RULE_ID_RE = re.compile(r"^dcr-[0-9a-f]{32}$")
DATETIME_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:\d{2})?$"
)
INT_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
DEFAULT_CODES = {
    400: "BadRequest",
    401: "InvalidAuthenticationToken",
    403: "OperationFailed",
    404: "NotFound",
    413: "ContentLengthLimitExceeded",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


class Refusal(Exception):
    """An answer other than 204: status, error code (None for a bare 500) and message."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class Dropped(Exception):
    """An injected fault closes the connection without an answer."""


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def validate_streams(streams: Any) -> dict[str, dict[str, str]]:
    """Check a ``{stream: {column: type}}`` declaration, as a DCR's streamDeclarations hold it."""
    if not isinstance(streams, dict) or not streams:
        raise ValueError("streams must be a non-empty object of {stream: {column: type}}")
    checked: dict[str, dict[str, str]] = {}
    for name, columns in streams.items():
        if not isinstance(name, str) or not name.startswith("Custom-"):
            raise ValueError(f"a custom stream's name starts with 'Custom-': {name!r}")
        if not isinstance(columns, dict) or not columns:
            raise ValueError(f"stream {name!r} needs a non-empty object of columns")
        for column, kind in columns.items():
            if kind not in COLUMN_TYPES:
                raise ValueError(
                    f"column {column!r} of {name!r}: type must be one of {COLUMN_TYPES}"
                )
        checked[name] = dict(columns)
    return checked


def _value_problem(value: Any, kind: str) -> str | None:
    """Why ``value`` cannot go into a column of type ``kind`` (null fits every column)."""
    if value is None or kind == "dynamic":
        return None
    if kind == "string":
        return None if isinstance(value, str) else "expected a string"
    if kind == "boolean":
        return None if isinstance(value, bool) else "expected true or false"
    if kind in INT_RANGES:
        low, high = INT_RANGES[kind]
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer ({kind})"
        return None if low <= value <= high else f"out of range for {kind}"
    if kind == "real":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok and math.isfinite(value) else "expected a number"
    # datetime: ISO 8601, as KQL parses it; a value without a zone is taken as UTC.
    if not isinstance(value, str) or not DATETIME_RE.match(value):
        return "expected an ISO 8601 datetime string"
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return "not a valid date and time"
    return None


def _truncate(value: str) -> tuple[str, bool]:
    encoded = value.encode()
    if len(encoded) <= MAX_FIELD_BYTES:
        return value, False
    return encoded[:MAX_FIELD_BYTES].decode(errors="ignore"), True


def check_rows(body: Any, columns: dict[str, str]) -> tuple[list[dict[str, Any]], int]:
    """The rows as stored (long strings truncated) and how many values were truncated."""
    if not isinstance(body, list):
        raise Refusal(400, "InvalidPayload", "The request body must be a JSON array of objects.")
    stored: list[dict[str, Any]] = []
    truncated = 0
    for index, row in enumerate(body):
        if not isinstance(row, dict):
            raise Refusal(400, "InvalidPayload", f"Item {index} of the array is not an object.")
        kept: dict[str, Any] = {}
        for column, value in row.items():
            kind = columns.get(column)
            if kind is None:
                raise Refusal(
                    400,
                    "InvalidPayload",
                    f"Row {index}: column '{column}' is not declared in the stream "
                    f"(declared: {', '.join(columns)}).",
                )
            problem = _value_problem(value, kind)
            if problem:
                raise Refusal(
                    400,
                    "InvalidPayload",
                    f"Row {index}: column '{column}' ({kind}): {problem}, got {json.dumps(value)}.",
                )
            if isinstance(value, str) and kind == "string":
                kept[column], cut = _truncate(value)
                truncated += cut
            else:
                kept[column] = value
        stored.append(kept)
    return stored, truncated


def _too_long(length: int) -> str:
    return (
        f"Maximum allowed content length: {MAX_CONTENT_LENGTH} bytes (1 MB). "
        f"Provided content length: {length} bytes."
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_body(raw: bytes, encoding: str) -> tuple[Any, int]:
    """The body's JSON and its decoded size, or the Refusal the service would answer."""
    if len(raw) > MAX_CONTENT_LENGTH:
        raise Refusal(413, "ContentLengthLimitExceeded", _too_long(len(raw)))
    if encoding == "gzip":
        try:
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, MAX_DECODED_LENGTH + 1)
        except zlib.error as exc:
            raise Refusal(400, "InvalidContentEncoding", f"The body is not gzip: {exc}.") from exc
    elif encoding in ("", "identity"):
        data = raw
    else:
        message = f"Content-Encoding {encoding!r} is not supported; use gzip or none."
        raise Refusal(400, "InvalidContentEncoding", message)
    if len(data) > MAX_DECODED_LENGTH:
        message = f"The decompressed payload exceeds {MAX_DECODED_LENGTH} bytes."
        raise Refusal(413, "PayloadSizeLimitExceeded", message)
    if not data.strip():
        # What the live service answers to an empty body (public SDK tests): 500, no code.
        raise Refusal(500, None, "")
    try:
        return json.loads(data, parse_constant=_reject_constant), len(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refusal(400, "InvalidPayload", f"The body is not valid UTF-8 JSON: {exc}.") from exc


@dataclass
class Upload:
    """One ingestion request as the emulator processes it."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw: bytes
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    epoch: int = 0
    rule_id: str | None = None
    stream: str | None = None
    decoded_bytes: int | None = None
    rows: int | None = None
    truncated: int = 0


class LogsEmulator:
    """Settings, stored rows, request log, request window and fault rules, under one lock."""

    def __init__(
        self,
        audience: str,
        rule_id: str,
        streams: dict[str, dict[str, str]],
        faults: list[dict[str, Any]],
        request_limit: tuple[int, float] | None,
    ) -> None:
        self.lock = threading.Lock()
        self.audience = audience
        self.rule_id = rule_id
        self.streams = streams
        self.faults = faults
        self.request_limit = request_limit
        # Object ids holding Monitoring Metrics Publisher on the DCR; None lets every identity in.
        self.publishers: set[str] | None = None
        self.rows: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.windows: dict[str, deque[float]] = {}
        self.epoch = 0
        self.initial = (audience, rule_id, json.dumps(streams), json.dumps(faults), request_limit)

    # ---- admin -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the start-up settings and faults, with no rows, log or request window."""
        with self.lock:
            self.audience, self.rule_id, streams, faults, self.request_limit = self.initial
            self.streams, self.faults = json.loads(streams), json.loads(faults)
            self.publishers = None
            self.rows.clear()
            self.log.clear()
            self.windows.clear()
            self.epoch += 1

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply an admin ``/_emulator/config`` body; raises ValueError on a bad one."""
        with self.lock:
            if "audience" in body:
                if not isinstance(body["audience"], str) or not body["audience"]:
                    raise ValueError("audience must be a non-empty string")
                self.audience = body["audience"]
            if "ruleId" in body:
                if not isinstance(body["ruleId"], str) or not RULE_ID_RE.match(body["ruleId"]):
                    raise ValueError("ruleId must be 'dcr-' and 32 lowercase hex digits")
                self.rule_id = body["ruleId"]
            if "streams" in body:
                self.streams = validate_streams(body["streams"])
            if "requestLimit" in body:
                self.request_limit = parse_limit(body["requestLimit"])
                self.windows.clear()
            if "publishers" in body:
                publishers = body["publishers"]
                if publishers is not None and not (
                    isinstance(publishers, list) and all(isinstance(p, str) for p in publishers)
                ):
                    raise ValueError("publishers must be null or a list of object ids")
                self.publishers = None if publishers is None else {p.lower() for p in publishers}
            return self.settings()

    def settings(self) -> dict[str, Any]:
        limit = self.request_limit
        return {
            "audience": self.audience,
            "ruleId": self.rule_id,
            "streams": self.streams,
            "requestLimit": f"{limit[0]}/{limit[1]:g}" if limit else None,
            "publishers": None if self.publishers is None else sorted(self.publishers),
        }

    def set_faults(self, rules: Any) -> None:
        checked = validate_faults(rules)
        with self.lock:
            self.faults = checked

    def stored_rows(self, stream: str | None) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r["row"]) for r in self.rows if stream is None or r["stream"] == stream]

    def record(self, upload: Upload, status: int, code: str | None, dropped: bool = False) -> None:
        with self.lock:
            if upload.epoch != self.epoch:
                return
            self.log.append(
                {
                    "seq": len(self.log) + 1,
                    "time": _iso_now(),
                    "method": "POST",
                    "path": upload.path,
                    "query": dict(upload.query),
                    "ruleId": upload.rule_id,
                    "stream": upload.stream,
                    "status": status,
                    "code": code,
                    "contentEncoding": upload.headers.get("content-encoding") or None,
                    "bytes": len(upload.raw),
                    "decodedBytes": upload.decoded_bytes,
                    "rows": upload.rows,
                    "truncatedValues": upload.truncated,
                    "accepted": status == 204,
                    "dropped": dropped,
                    "client_request_id": upload.headers.get("x-ms-client-request-id"),
                    "request_id": upload.request_id,
                }
            )

    # ---- the ingestion pipeline --------------------------------------------------------------

    def authenticate(self, upload: Upload) -> dict[str, Any]:
        """The token's claims, or the 401 the service answers."""
        auth = upload.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refusal(401, "InvalidAuthenticationToken", "A bearer token is required.")
        with self.lock:
            audience = self.audience
        try:
            return tokens.verify(token.strip(), audience)
        except tokens.TokenError as exc:
            code = (
                "InvalidAudience" if exc.code == "wrong_audience" else "InvalidAuthenticationToken"
            )
            raise Refusal(401, code, exc.message) from exc

    def target(self, upload: Upload, claims: dict[str, Any]) -> dict[str, str]:
        """Check api-version, rule and stream in the path; returns the stream's columns."""
        parts = [unquote(p) for p in upload.path.strip("/").split("/")]
        if len(parts) != 4 or parts[0] != "dataCollectionRules" or parts[2] != "streams":
            raise Refusal(404, "NotFound", f"No route for POST {upload.path}.")
        upload.rule_id, upload.stream = parts[1], parts[3]
        version = upload.query.get("api-version")
        if version != API_VERSION:
            message = f"The api-version {version!r} is not supported; supported: {API_VERSION}."
            raise Refusal(400, "InvalidApiVersion", message)
        if not RULE_ID_RE.match(upload.rule_id):
            message = f"'{upload.rule_id}' is not a data collection rule immutable id (dcr-...)."
            raise Refusal(400, "InvalidDataCollectionRuleId", message)
        with self.lock:
            rule_id, streams, publishers = self.rule_id, self.streams, self.publishers
        if upload.rule_id != rule_id:
            message = f"Data collection rule with immutable Id '{upload.rule_id}' not found."
            raise Refusal(404, "NotFound", message)
        if publishers is not None and str(claims.get("oid", "")).lower() not in publishers:
            raise Refusal(
                403,
                "OperationFailed",
                "The authentication token provided does not have access to ingest data for the "
                f"data collection rule with immutable Id '{rule_id}'.",
            )
        if upload.stream not in streams:
            message = (
                f"Stream '{upload.stream}' is not declared in data collection rule '{rule_id}' "
                f"(declared: {', '.join(streams)})."
            )
            raise Refusal(400, "InvalidStream", message)
        return streams[upload.stream]

    def fault(self, upload: Upload) -> Refusal | None:
        """An injected answer for this call (after an injected delay), or None; may drop."""
        with self.lock:
            rule = take_fault(self.faults, "POST", upload.path, default_methods=("POST",))
        if rule is None:
            return None
        if rule.get("delay"):
            time.sleep(float(rule["delay"]))
        if rule.get("drop"):
            raise Dropped
        status = rule.get("status")
        if not status:
            return None
        status = int(status)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        message = rule.get("message") or f"{phrase} (injected by the devstack Logs emulator)."
        headers = {} if rule.get("retryAfter") is None else {"Retry-After": str(rule["retryAfter"])}
        return Refusal(status, rule.get("code") or DEFAULT_CODES.get(status), message, headers)

    def throttle(self, upload: Upload) -> None:
        """The per-DCR request limit (12,000 a minute in Azure), when one is set."""
        with self.lock:
            if not self.request_limit:
                return
            times = self.windows.setdefault(str(upload.rule_id), deque())
            wait = admit(times, self.request_limit, time.monotonic())
        if wait:
            headers = {"Retry-After": format_retry_after(wait, "int")}
            raise Refusal(429, "TooManyRequests", "Too many requests for this DCR.", headers)

    def ingest(self, upload: Upload) -> None:
        """Run one upload; returns when its rows are stored, raises Refusal otherwise."""
        claims = self.authenticate(upload)
        columns = self.target(upload, claims)
        injected = self.fault(upload)
        if injected is not None:
            raise injected
        self.throttle(upload)
        body, upload.decoded_bytes = decode_body(
            upload.raw, upload.headers.get("content-encoding", "").strip().lower()
        )
        upload.rows = len(body) if isinstance(body, list) else None
        rows, upload.truncated = check_rows(body, columns)
        with self.lock:
            if upload.epoch == self.epoch:
                self.rows.extend({"stream": upload.stream, "row": row} for row in rows)


class LogsHandler(JsonHandler):
    """HTTP front: the ingestion route and the admin endpoints."""

    @property
    def emulator(self) -> LogsEmulator:
        return self.server.app  # type: ignore[attr-defined,no-any-return]

    def do_GET(self) -> None:
        if self.path_only.startswith("/_emulator/"):
            self._admin()
        else:
            self.read_body()
            self._error(Refusal(404, "NotFound", f"No route for GET {self.path_only}."), None)

    def do_POST(self) -> None:
        if self.path_only.startswith("/_emulator/"):
            self._admin()
        else:
            self._ingest()

    def _ingest(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # The bridge's client always sends a Content-Length; refuse rather than guess.
            self.close_connection = True
            self._error(Refusal(411, "LengthRequired", "Content-Length is required."), None)
            return
        if int(self.headers.get("Content-Length") or 0) > MAX_READ:
            # Far past the limit: answer without reading it all, and drop the connection after.
            self.close_connection = True
            length = int(self.headers["Content-Length"])
            self._error(Refusal(413, "ContentLengthLimitExceeded", _too_long(length)), None)
            return
        upload = Upload(
            path=self.path_only,
            query=self.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            raw=self.read_body(),
            epoch=self.emulator.epoch,
        )
        try:
            self.emulator.ingest(upload)
        except Dropped:
            self.emulator.record(upload, 0, None, dropped=True)
            self.drop_connection()
            return
        except Refusal as refusal:
            self.emulator.record(upload, refusal.status, refusal.code)
            self._error(refusal, upload)
            return
        self.emulator.record(upload, 204, None)
        self.send_json(204, None, self._correlation(upload))

    @staticmethod
    def _correlation(upload: Upload | None) -> dict[str, str]:
        if upload is None:
            return {}
        headers = {"x-ms-request-id": upload.request_id}
        if upload.headers.get("x-ms-client-request-id"):
            headers["x-ms-client-request-id"] = upload.headers["x-ms-client-request-id"]
        return headers

    def _error(self, refusal: Refusal, upload: Upload | None) -> None:
        headers = {**self._correlation(upload), **refusal.headers}
        if refusal.code is None:
            self.send_json(refusal.status, None, headers)
            return
        headers["x-ms-error-code"] = refusal.code
        body = {"error": {"code": refusal.code, "message": refusal.message}}
        self.send_json(refusal.status, body, headers)

    def _admin(self) -> None:
        emu = self.emulator
        path = self.path_only.removeprefix("/_emulator/").strip("/")
        try:
            body = self.read_json()
        except ValueError:
            self.send_json(400, {"error": "body is not JSON"})
            return
        route = (self.command, path)
        try:
            if route == ("GET", "rows"):
                rows = emu.stored_rows(self.query.get("stream"))
                self.send_json(200, {"count": len(rows), "rows": rows})
            elif route == ("GET", "requests"):
                with emu.lock:
                    log = list(emu.log)
                self.send_json(200, {"count": len(log), "requests": log})
            elif route == ("POST", "reset"):
                emu.reset()
                self.send_json(200, {"reset": True})
            elif route == ("GET", "config"):
                with emu.lock:
                    self.send_json(200, emu.settings())
            elif route == ("POST", "config"):
                if not isinstance(body, dict):
                    raise ValueError("config body must be a JSON object")
                self.send_json(200, emu.configure(body))
            elif route == ("GET", "faults"):
                with emu.lock:
                    self.send_json(200, {"faults": emu.faults})
            elif route == ("POST", "faults"):
                emu.set_faults(body)
                self.send_json(200, {"faults": body})
            else:
                self.send_json(404, {"error": f"no admin route {self.command} {self.path_only}"})
        except (TypeError, ValueError) as exc:
            self.send_json(400, {"error": str(exc)})


def build_server(
    port: int = 0,
    *,
    audience: str | None = None,
    rule_id: str | None = None,
    streams: dict[str, dict[str, str]] | None = None,
    faults: list[dict[str, Any]] | None = None,
    request_limit: str | None = None,
) -> DevServer:
    """Build (not start) the emulator; arguments override the LOGS_EMULATOR_* settings."""
    env = os.environ
    rule = rule_id or env.get("LOGS_EMULATOR_RULE_ID") or DEFAULT_RULE_ID
    if not RULE_ID_RE.match(rule):
        raise ValueError(f"LOGS_EMULATOR_RULE_ID must be 'dcr-' and 32 lowercase hex, got {rule!r}")
    if streams is None:
        raw = env.get("LOGS_EMULATOR_STREAMS")
        streams = json.loads(raw) if raw else {DEFAULT_STREAM: dict(DEFAULT_COLUMNS)}
    if faults is None:
        faults = json.loads(env.get("LOGS_EMULATOR_FAULTS") or "[]")
    limit = request_limit if request_limit is not None else env.get("LOGS_EMULATOR_REQUEST_LIMIT")
    emulator = LogsEmulator(
        audience=audience or env.get("LOGS_EMULATOR_AUDIENCE") or DEFAULT_AUDIENCE,
        rule_id=rule,
        streams=validate_streams(streams),
        faults=validate_faults(faults),
        request_limit=parse_limit(limit),
    )
    return make_server(LogsHandler, port, emulator)


def main(argv: list[str] | None = None) -> int:
    """Run the emulator in the foreground until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m devstack logs", description=__doc__)
    parser.add_argument("--port", type=int, default=7074, help="0 picks a free port")
    args = parser.parse_args(argv)
    server = build_server(args.port)
    emulator: LogsEmulator = server.app
    extra = {"ruleId": emulator.rule_id, "streams": sorted(emulator.streams)}
    return run_forever(server, "logs", extra)


if __name__ == "__main__":
    raise SystemExit(main())
