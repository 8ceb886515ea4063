"""Microsoft Graph beta emulator, faithful to the parts of Graph the bridge touches.

Bearer tokens from devstack.tokens are required and checked (audience, lifetime, app roles); the
``deviceComplianceScriptDeviceState`` schema, enum, ``@odata.type`` and read-only ``id`` are
enforced; errors have Graph's shape and correlation headers; Intune's per-app write throttle,
``$batch`` and fault injection (status, Retry-After, latency, dropped connections, the live
service's "No method match route template" refusal) are driven by settings or admin endpoints.

Run alone: ``python -m devstack.graph --port 7072``; the bridge's GRAPH_BASE_URL is ``<url>/beta``.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import math
import os
import random
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from devstack import tokens
from devstack.serving import DevServer, JsonHandler, make_server, run_forever

ENTITY_TYPE = "#microsoft.graph.deviceComplianceScriptDeviceState"
RUN_STATES = ("unknown", "success", "fail", "scriptError", "pending", "notApplicable")
DATETIME_PROPERTIES = ("lastStateUpdateDateTime", "expectedStateUpdateDateTime", "lastSyncDateTime")
STRING_PROPERTIES = ("scriptOutput", "scriptError")
PROPERTIES = ("detectionState", *DATETIME_PROPERTIES, *STRING_PROPERTIES)
DATETIME_RE = re.compile(
    r"^[0-9]{4,}-(0[1-9]|1[012])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"([.][0-9]{1,12})?(Z|[+-][0-9][0-9]:[0-9][0-9])$"
)
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
FILTER_RE = re.compile(r"^\s*managedDevice/id\s+eq\s+'([^']*)'\s*$")
WRITE_ROLES = (
    "DeviceManagementConfiguration.ReadWrite.All",
    "DeviceManagementManagedDevices.ReadWrite.All",
)
READ_ROLES = (
    *WRITE_ROLES,
    "DeviceManagementConfiguration.Read.All",
    "DeviceManagementManagedDevices.Read.All",
)
WRITE_METHODS = ("PATCH", "POST", "PUT", "DELETE")
RETRY_AFTER_FORMATS = ("int", "fraction", "date")
MAX_BATCH = 20
DIAGNOSTIC = json.dumps(
    {"ServerInfo": {"DataCenter": "Devstack", "Slice": "E", "Ring": "0", "ScaleUnit": "000"}}
)
DEFAULT_CODES = {
    400: "BadRequest",
    401: "InvalidAuthenticationToken",
    403: "Forbidden",
    404: "ResourceNotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    424: "FailedDependency",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Outcome:
    """One answer to a Graph request (a plain request or a batch item)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    applied: bool = False
    drop: bool = False


@dataclass
class Call:
    """One Graph request as the emulator processes it, with its correlation ids."""

    method: str
    path: str  # as sent, under /beta, e.g. /deviceManagement/...
    query: dict[str, str]
    body: Any
    claims: dict[str, Any]
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_request_id: str | None = None
    batch_item_id: str | None = None
    epoch: int = 0  # the emulator's reset generation when the request arrived


def graph_error(status: int, code: str, message: str, call: Call) -> Outcome:
    """Graph's error body, with innerError carrying the correlation ids."""
    inner = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "request-id": call.request_id,
        "client-request-id": call.client_request_id or str(uuid.uuid4()),
    }
    return Outcome(status, {"error": {"code": code, "message": message, "innerError": inner}})


def parse_write_limit(value: str | None) -> tuple[int, float] | None:
    """``"200/20"`` -> (200, 20.0); unset, empty or ``0`` -> no throttle."""
    if not value or value.strip() == "0":
        return None
    count, _, seconds = value.partition("/")
    limit, window = int(count), float(seconds or 1)
    if limit <= 0:
        return None
    if window <= 0:
        raise ValueError(f"write limit window must be positive: {value!r}")
    return limit, window


def validate_faults(rules: Any) -> list[dict[str, Any]]:
    """Check a fault rule list; returns copies so runtime counters never alias the caller's."""
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise ValueError("faults must be a JSON list of objects")
    known = {"status", "code", "message", "retryAfter", "count", "probability", "delay", "drop"}
    known |= {"match", "methods"}
    for rule in rules:
        unknown = set(rule) - known
        if unknown:
            raise ValueError(f"unknown fault rule keys: {sorted(unknown)}")
        if not (rule.get("status") or rule.get("delay") or rule.get("drop")):
            raise ValueError("a fault rule needs status, delay or drop")
    return [dict(rule) for rule in rules]


def format_retry_after(seconds: float, style: str) -> str:
    """Render a Retry-After value as Graph may: integer, fractional seconds, or an HTTP-date."""
    if style == "fraction":
        return f"{max(seconds, 0.001):.3f}"
    if style == "date":
        return email.utils.formatdate(math.ceil(time.time() + seconds), usegmt=True)
    return str(max(1, math.ceil(seconds)))


def _segments(path: str) -> list[str]:
    return [unquote(part) for part in path.strip("/").split("/")] if path.strip("/") else []


class GraphEmulator:
    """State, request log, throttle window and fault rules; one lock guards them all."""

    def __init__(
        self,
        audience: str,
        scripts: list[str],
        write_limit: tuple[int, float] | None,
        retry_after_format: str,
        faults: list[dict[str, Any]],
    ) -> None:
        self.audience = audience
        self.lock = threading.Lock()
        self.scripts = {s.lower() for s in scripts}
        self.write_limit = write_limit
        self.retry_after_format = retry_after_format
        self.faults = faults
        self.states: dict[tuple[str, str], dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.windows: dict[str, deque[float]] = {}
        # A reset starts a new epoch: requests still in flight from before it (a slow fault)
        # neither change the states nor appear in the log, so tests stay independent.
        self.epoch = 0
        self.initial = (
            set(self.scripts),
            write_limit,
            retry_after_format,
            [dict(f) for f in faults],
        )

    # ---- admin -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the start-up settings and faults, with no states, log or throttle window."""
        with self.lock:
            scripts, self.write_limit, self.retry_after_format, faults = self.initial
            self.scripts = set(scripts)
            self.faults = [dict(f) for f in faults]
            self.states.clear()
            self.log.clear()
            self.windows.clear()
            self.epoch += 1

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply an admin ``/_emulator/config`` body; raises ValueError on a bad one."""
        with self.lock:
            if "scripts" in body:
                scripts = body["scripts"] or []
                if not isinstance(scripts, list) or not all(GUID_RE.match(s) for s in scripts):
                    raise ValueError("scripts must be a list of GUIDs")
                self.scripts = {s.lower() for s in scripts}
            if "writeLimit" in body:
                self.write_limit = parse_write_limit(body["writeLimit"])
                self.windows.clear()
            if "retryAfterFormat" in body:
                if body["retryAfterFormat"] not in RETRY_AFTER_FORMATS:
                    raise ValueError(f"retryAfterFormat must be one of {RETRY_AFTER_FORMATS}")
                self.retry_after_format = body["retryAfterFormat"]
            return self.settings()

    def settings(self) -> dict[str, Any]:
        limit = self.write_limit
        return {
            "audience": self.audience,
            "scripts": sorted(self.scripts),
            "writeLimit": f"{limit[0]}/{limit[1]:g}" if limit else None,
            "retryAfterFormat": self.retry_after_format,
        }

    def set_faults(self, rules: Any) -> None:
        checked = validate_faults(rules)
        with self.lock:
            self.faults = checked

    def state_rows(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {"scriptId": sid, "runStateId": rid, **entity}
                for (sid, rid), entity in self.states.items()
            ]

    def record(self, call: Call, outcome: Outcome) -> None:
        """Append to the request log; refused, faulted and batch-item requests included."""
        with self.lock:
            if call.epoch != self.epoch:
                return
            self.log.append(
                {
                    "seq": len(self.log) + 1,
                    "time": _iso_now(),
                    "method": call.method,
                    "path": "/beta" + call.path,
                    "status": outcome.status,
                    "client_request_id": call.client_request_id,
                    "request_id": call.request_id,
                    "body": call.body if call.method in WRITE_METHODS else None,
                    "applied": outcome.applied,
                    "batch_item_id": call.batch_item_id,
                    "dropped": outcome.drop,
                }
            )

    # ---- request pipeline --------------------------------------------------------------------

    def take_fault(
        self, method: str, path: str, *, outer_batch: bool = False
    ) -> dict[str, Any] | None:
        """The first rule that matches and has applications left, decremented; None if none."""
        with self.lock:
            for rule in self.faults:
                match = rule.get("match")
                # A whole $batch is faulted only by rules that name it; otherwise its items are.
                if outer_batch and not match:
                    continue
                if match and match not in path and match not in unquote(path):
                    continue
                if method not in [m.upper() for m in rule.get("methods") or WRITE_METHODS]:
                    continue
                count = rule.get("count")
                if count is not None and count <= 0:
                    continue
                if random.random() >= float(rule.get("probability", 1)):
                    continue
                if count is not None:
                    rule["count"] = count - 1
                return dict(rule)
        return None

    def fault_outcome(self, rule: dict[str, Any], call: Call) -> Outcome | None:
        """Apply a fault rule: sleep, drop, or answer; None means carry on normally."""
        if rule.get("delay"):
            time.sleep(float(rule["delay"]))
        if rule.get("drop"):
            return Outcome(0, drop=True)
        status = rule.get("status")
        if not status:
            return None
        status = int(status)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        outcome = graph_error(
            status,
            rule.get("code") or DEFAULT_CODES.get(status, "UnknownError"),
            rule.get("message") or f"{phrase} (injected by the devstack Graph emulator).",
            call,
        )
        if rule.get("retryAfter") is not None:
            outcome.headers["Retry-After"] = str(rule["retryAfter"])
        return outcome

    def throttle(self, call: Call) -> Outcome | None:
        """Intune's per-app write budget: a sliding window counted per token appid."""
        if call.method not in WRITE_METHODS:
            return None
        with self.lock:
            if not self.write_limit:
                return None
            limit, window = self.write_limit
            now = time.monotonic()
            times = self.windows.setdefault(str(call.claims.get("appid")), deque())
            while times and times[0] <= now - window:
                times.popleft()
            if len(times) < limit:
                times.append(now)
                return None
            wait = times[0] + window - now
            style = self.retry_after_format
        outcome = graph_error(429, "TooManyRequests", "Too many requests.", call)
        outcome.headers["Retry-After"] = format_retry_after(wait, style)
        return outcome

    def process(self, call: Call) -> Outcome:
        """Authorize, fault, throttle, route and log one (already authenticated) request."""
        outcome = self._process(call)
        self.record(call, outcome)
        return outcome

    def _process(self, call: Call) -> Outcome:
        roles = call.claims.get("roles") or []
        needed = WRITE_ROLES if call.method in WRITE_METHODS else READ_ROLES
        if not any(role in roles for role in needed):
            return graph_error(
                403,
                "Forbidden",
                "Application is not authorized to perform this operation. Application must have "
                f"one of the following scopes: {', '.join(needed)}",
                call,
            )
        rule = self.take_fault(call.method, "/beta" + call.path)
        if rule is not None:
            faulted = self.fault_outcome(rule, call)
            if faulted is not None:
                return faulted
        throttled = self.throttle(call)
        if throttled is not None:
            return throttled
        return self.route(call)

    # ---- routes ------------------------------------------------------------------------------

    def route(self, call: Call) -> Outcome:
        segments = _segments(call.path)
        prefix = ["deviceManagement", "deviceComplianceScripts"]
        if len(segments) < 3 or segments[:2] != prefix or len(segments) > 5:
            expected = [*prefix, None, "deviceRunStates"]
            mismatched = (
                s for s, want in zip(segments, expected, strict=False) if want and s != want
            )
            bad = next(mismatched, segments[-1] if segments else "")
            return graph_error(
                400, "BadRequest", f"Resource not found for the segment '{bad}'.", call
            )
        if len(segments) >= 4 and segments[3] != "deviceRunStates":
            return graph_error(
                400, "BadRequest", f"Resource not found for the segment '{segments[3]}'.", call
            )
        allowed = {3: ("GET",), 4: ("GET",), 5: ("GET", "PATCH")}[len(segments)]
        if call.method not in allowed:
            return graph_error(
                405,
                "MethodNotAllowed",
                f"The HTTP method '{call.method}' is not allowed on this resource.",
                call,
            )
        script_id = segments[2]
        if not GUID_RE.match(script_id):
            return graph_error(
                400,
                "BadRequest",
                f"Invalid key '{script_id}': a deviceComplianceScript id is a GUID.",
                call,
            )
        script_id = script_id.lower()
        with self.lock:
            known = not self.scripts or script_id in self.scripts
        if not known:
            return graph_error(
                404,
                "ResourceNotFound",
                f"Resource 'deviceComplianceScript' with id '{script_id}' was not found.",
                call,
            )
        if len(segments) == 3:
            return Outcome(
                200, {"id": script_id, "displayName": f"Devstack compliance script {script_id}"}
            )
        if len(segments) == 4:
            return self.list_run_states(call, script_id)
        run_state_id = segments[4]
        if not run_state_id or "/" in run_state_id:
            return graph_error(
                400, "BadRequest", f"Invalid deviceRunStates key '{run_state_id}'.", call
            )
        if call.method == "GET":
            with self.lock:
                entity = self.states.get((script_id, run_state_id))
            if entity is None:
                return graph_error(
                    404,
                    "ResourceNotFound",
                    f"Resource 'deviceComplianceScriptDeviceState' with id '{run_state_id}' "
                    "was not found.",
                    call,
                )
            return Outcome(200, self._entity_body(script_id, entity))
        return self.patch_run_state(call, script_id, run_state_id)

    @staticmethod
    def _entity_body(script_id: str, entity: dict[str, Any]) -> dict[str, Any]:
        context = (
            "https://graph.microsoft.com/beta/$metadata#deviceManagement/"
            f"deviceComplianceScripts('{script_id}')/deviceRunStates/$entity"
        )
        return {"@odata.context": context, **entity}

    def list_run_states(self, call: Call, script_id: str) -> Outcome:
        flt = call.query.get("$filter")
        device = None
        if flt is not None:
            found = FILTER_RE.match(flt)
            if not found:
                return graph_error(
                    400, "BadRequest", f"Unsupported $filter expression: {flt!r}.", call
                )
            device = found.group(1).lower()
        with self.lock:
            rows = [
                dict(entity)
                for (sid, rid), entity in self.states.items()
                if sid == script_id and (device is None or device in rid.lower())
            ]
        context = (
            "https://graph.microsoft.com/beta/$metadata#deviceManagement/"
            f"deviceComplianceScripts('{script_id}')/deviceRunStates"
        )
        return Outcome(200, {"@odata.context": context, "value": rows})

    def patch_run_state(self, call: Call, script_id: str, run_state_id: str) -> Outcome:
        problem = validate_patch_body(call.body)
        if problem:
            return graph_error(400, "BadRequest", problem, call)
        changes = {k: v for k, v in call.body.items() if k != "@odata.type"}
        with self.lock:
            if call.epoch != self.epoch:
                return Outcome(200, {}, applied=False)
            entity = self.states.setdefault(
                (script_id, run_state_id),
                {"id": run_state_id, "detectionState": "unknown"}
                | {name: None for name in PROPERTIES[1:]},
            )
            entity.update(changes)
            snapshot = dict(entity)
        return Outcome(200, self._entity_body(script_id, snapshot), applied=True)

    # ---- batch -------------------------------------------------------------------------------

    def batch(self, outer: Call) -> Outcome:
        """Run a JSON batch: items in order, each authorized, faulted and throttled on its own."""
        body = outer.body
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return graph_error(
                400, "BadRequest", "A batch body needs a non-empty 'requests' array.", outer
            )
        if len(requests) > MAX_BATCH:
            return graph_error(
                400,
                "BadRequest",
                f"The batch has {len(requests)} requests; at most {MAX_BATCH} are allowed.",
                outer,
            )
        seen: set[str] = set()
        for item in requests:
            problem = _batch_item_problem(item, seen)
            if problem:
                return graph_error(400, "BadRequest", problem, outer)
            seen.add(str(item["id"]))
        statuses: dict[str, int] = {}
        responses: list[dict[str, Any]] = []
        for item in requests:
            item_id = str(item["id"])
            headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
            split = urlsplit(str(item["url"]))
            call = Call(
                method=str(item["method"]).upper(),
                path="/" + split.path.lstrip("/"),
                query={k: v[-1] for k, v in parse_qs(split.query).items()},
                body=item.get("body"),
                claims=outer.claims,
                client_request_id=headers.get("client-request-id"),
                batch_item_id=item_id,
                epoch=outer.epoch,
            )
            depends = [str(d) for d in item.get("dependsOn") or []]
            if any(not 200 <= statuses.get(d, 0) < 300 for d in depends):
                outcome = graph_error(
                    424, "FailedDependency", f"Dependency of request {item_id} failed.", call
                )
                self.record(call, outcome)
            else:
                outcome = self.process(call)
            if outcome.drop:
                return outcome
            statuses[item_id] = outcome.status
            item_headers = {"Content-Type": "application/json", **outcome.headers}
            responses.append(
                {
                    "id": item_id,
                    "status": outcome.status,
                    "headers": item_headers,
                    "body": outcome.body,
                }
            )
        return Outcome(200, {"responses": responses})


def _batch_item_problem(item: Any, seen: set[str]) -> str | None:
    """Why a batch item makes the whole batch invalid, or None."""
    if not isinstance(item, dict):
        return "Each batch request must be a JSON object."
    for key in ("id", "method", "url"):
        if not isinstance(item.get(key), str) or not item[key]:
            return f"Batch request is missing '{key}'."
    if item["id"] in seen:
        return f"Batch request id '{item['id']}' is not unique."
    depends = item.get("dependsOn") or []
    if not isinstance(depends, list) or any(str(d) not in seen for d in depends):
        return f"Batch request '{item['id']}' depends on a request that does not precede it."
    headers = {str(k).lower() for k in (item.get("headers") or {})}
    if "body" in item and "content-type" not in headers:
        return f"Write request id : {item['id']} does not contain Content-Type header or body."
    return None


def validate_patch_body(body: Any) -> str | None:
    """Why Graph would refuse this deviceComplianceScriptDeviceState PATCH body, or None."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    for key, value in body.items():
        if key == "id":
            return "The property 'id' is read-only and cannot be set in a PATCH request."
        if key == "@odata.type":
            if value != ENTITY_TYPE:
                return f"Invalid @odata.type {value!r}: expected '{ENTITY_TYPE}'."
        elif key == "detectionState":
            if value not in RUN_STATES:
                return (
                    f"Invalid value {json.dumps(value)} for property 'detectionState': "
                    f"the runState enum has {', '.join(RUN_STATES)}."
                )
        elif key in DATETIME_PROPERTIES:
            if not isinstance(value, str) or not DATETIME_RE.match(value):
                return (
                    f"Invalid value {json.dumps(value)} for property '{key}': expected an "
                    "Edm.DateTimeOffset with a zone, e.g. 2026-11-28T10:00:00Z."
                )
        elif key in STRING_PROPERTIES:
            if value is not None and not isinstance(value, str):
                return f"Invalid value for property '{key}': expected a string or null."
        else:
            return (
                f"Invalid property '{key}': it does not exist on type "
                "'microsoft.graph.deviceComplianceScriptDeviceState'. Make sure to only use "
                "property names that are defined by the type."
            )
    return None


class GraphHandler(JsonHandler):
    """HTTP front: authenticates /beta calls, serves the admin endpoints."""

    @property
    def emulator(self) -> GraphEmulator:
        return self.server.app  # type: ignore[attr-defined,no-any-return]

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path = self.path_only
        if path == "/beta" or path.startswith("/beta/"):
            self._graph(path[len("/beta") :])
        elif path.startswith("/_emulator/"):
            self._admin(path[len("/_emulator/") :])
        else:
            self.read_body()
            self.send_json(404, {"error": {"code": "NotFound", "message": f"No route {path}"}})

    def _graph(self, path: str) -> None:
        raw = self.read_body()
        call = Call(
            method=self.command,
            path="/" + path.strip("/"),
            query=self.query,
            body=None,
            claims={},
            client_request_id=self.headers.get("client-request-id"),
            epoch=self.emulator.epoch,
        )
        outcome = self._authenticate(call)
        if outcome is None and raw.strip():
            try:
                call.body = json.loads(raw)
            except ValueError:
                message = "The request body is not valid JSON."
                outcome = graph_error(400, "BadRequest", message, call)
        if outcome is not None:
            self.emulator.record(call, outcome)
        elif _segments(call.path) == ["$batch"] and call.method == "POST":
            rule = self.emulator.take_fault("POST", "/beta/$batch", outer_batch=True)
            outcome = self.emulator.fault_outcome(rule, call) if rule else None
            if outcome is None:
                outcome = self.emulator.batch(call)
            self.emulator.record(call, outcome)
        else:
            outcome = self.emulator.process(call)
        if outcome.drop:
            self.drop_connection()
            return
        headers = {
            "request-id": call.request_id,
            "client-request-id": call.client_request_id or "",
            "x-ms-ags-diagnostic": DIAGNOSTIC,
            **outcome.headers,
        }
        if not call.client_request_id:
            del headers["client-request-id"]
        self.send_json(outcome.status, outcome.body, headers)

    def _authenticate(self, call: Call) -> Outcome | None:
        """None when the bearer token is good (claims stored on the call), else the 401."""
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if not auth:
            message = "Access token is empty."
        elif scheme.lower() != "bearer" or not token.strip():
            message = "Access token is malformed: expected 'Authorization: Bearer <token>'."
        else:
            try:
                call.claims = tokens.verify(token.strip(), self.emulator.audience)
                return None
            except tokens.TokenError as exc:
                message = exc.message
        outcome = graph_error(401, "InvalidAuthenticationToken", message, call)
        outcome.headers["WWW-Authenticate"] = (
            'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/'
            'oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'
        )
        return outcome

    def _admin(self, path: str) -> None:
        emu = self.emulator
        try:
            body = self.read_json()
        except ValueError:
            self.send_json(400, {"error": "body is not JSON"})
            return
        route = (self.command, path.strip("/"))
        try:
            if route == ("GET", "requests"):
                with emu.lock:
                    self.send_json(200, {"requests": list(emu.log)})
            elif route == ("GET", "states"):
                self.send_json(200, {"states": emu.state_rows()})
            elif self.command == "GET" and path.startswith("states/"):
                self._admin_state(path[len("states/") :])
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
                self.send_json(404, {"error": f"no admin route {self.command} /_emulator/{path}"})
        except (TypeError, ValueError) as exc:
            self.send_json(400, {"error": str(exc)})

    def _admin_state(self, rest: str) -> None:
        parts = [unquote(p) for p in rest.split("/")]
        if len(parts) != 2:
            self.send_json(404, {"error": "use /_emulator/states/{scriptId}/{runStateId}"})
            return
        script_id, run_state_id = parts[0].lower(), parts[1]
        with self.emulator.lock:
            entity = self.emulator.states.get((script_id, run_state_id))
            row = None if entity is None else dict(entity)
        if row is None:
            self.send_json(404, {"error": "no such state"})
        else:
            self.send_json(200, {"scriptId": script_id, "runStateId": run_state_id, **row})


def build_server(
    port: int = 0,
    *,
    audience: str | None = None,
    scripts: list[str] | None = None,
    write_limit: str | None = None,
    retry_after_format: str | None = None,
    faults: list[dict[str, Any]] | None = None,
) -> DevServer:
    """Build (not start) the emulator; arguments override the GRAPH_EMULATOR_* settings."""
    env = os.environ
    if scripts is None:
        scripts = [s.strip() for s in env.get("GRAPH_EMULATOR_SCRIPTS", "").split(",") if s.strip()]
    bad = [s for s in scripts if not GUID_RE.match(s)]
    if bad:
        raise ValueError(f"GRAPH_EMULATOR_SCRIPTS must list GUIDs, got {bad}")
    style = retry_after_format or env.get("GRAPH_EMULATOR_RETRY_AFTER_FORMAT") or "int"
    if style not in RETRY_AFTER_FORMATS:
        raise ValueError(f"GRAPH_EMULATOR_RETRY_AFTER_FORMAT must be one of {RETRY_AFTER_FORMATS}")
    if faults is None:
        faults = json.loads(env.get("GRAPH_EMULATOR_FAULTS") or "[]")
    emulator = GraphEmulator(
        audience=audience or env.get("GRAPH_EMULATOR_AUDIENCE") or "https://graph.microsoft.com",
        scripts=scripts,
        write_limit=parse_write_limit(
            write_limit if write_limit is not None else env.get("GRAPH_EMULATOR_WRITE_LIMIT")
        ),
        retry_after_format=style,
        faults=validate_faults(faults),
    )
    return make_server(GraphHandler, port, emulator)


def main(argv: list[str] | None = None) -> int:
    """Run the emulator in the foreground until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m devstack.graph", description=__doc__)
    parser.add_argument("--port", type=int, default=7072, help="0 picks a free port")
    args = parser.parse_args(argv)
    return run_forever(build_server(args.port), "graph")


if __name__ == "__main__":
    raise SystemExit(main())
